"""`llmtune distill` with the other kinds of teacher the command accepts: a GGUF file (the same
weights exported as f32 GGUF give the same losses as the directory), a teacher with a PEFT adapter,
a teacher quantized to 4 bits while it loads, and a QLoRA student."""
import json

from test_finetune import MODELS, chat_rows, write_jsonl


def losses(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def distill(llmtune, tmp_path, name, *extra, teacher=MODELS / "qwen2"):
    data = tmp_path / "d.jsonl"
    if not data.exists():
        write_jsonl(data, chat_rows(12))
    out = tmp_path / name
    r = llmtune("distill", "--model", MODELS / "qwen2", "--teacher", teacher, "--data", data, "--output", out,
                "--max-steps", 3, "train.batch_size=4", "data.packing=false", "lora.r=4", "lora.dropout=0",
                "train.lr=1e-2", "distill.temperature=2", *extra, "--json", timeout=300)
    assert r.code == 0, r.err
    return losses(out), json.loads(r.out)


def test_gguf_teacher_equals_the_directory_it_was_exported_from(llmtune, tmp_path):
    gguf = tmp_path / "teacher.gguf"
    r = llmtune("quantize", "--model", MODELS / "qwen2", "--output", gguf, "--type", "f32")
    assert r.code == 0, r.err
    want, _ = distill(llmtune, tmp_path, "dir")
    got, summary = distill(llmtune, tmp_path, "gguf", teacher=gguf)
    assert summary["distill"]["teacher"] == str(gguf)
    for a, b in zip(got, want):
        for key in ("loss", "soft_loss", "ce_loss"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(abs(b[key]), 1e-6), (key, a, b)


def test_teacher_adapter_changes_the_soft_loss(llmtune, tmp_path):
    """A teacher with an adapter is another teacher: self-distillation from the bare model starts at a
    soft loss of 0, from the adapted one it does not."""
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(12))
    ft = tmp_path / "ft"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", ft, "--max-steps", 4,
                "train.lr=5e-2", "lora.r=4", timeout=300)
    assert r.code == 0, r.err
    bare, _ = distill(llmtune, tmp_path, "bare")
    adapted, summary = distill(llmtune, tmp_path, "adapted", f"teacher.adapter={ft / 'adapter'}")
    assert bare[0]["soft_loss"] < 1e-6
    assert adapted[0]["soft_loss"] > 1e-3
    assert summary["distill"]["teacher"] == str(MODELS / "qwen2")


def test_four_bit_teacher_and_qlora_student_train(llmtune, tmp_path):
    nf4, _ = distill(llmtune, tmp_path, "nf4-teacher", "teacher.quantize=nf4")
    assert nf4[0]["soft_loss"] > 0  # the 4-bit teacher is not the fp32 student
    qlora, summary = distill(llmtune, tmp_path, "qlora", "method=qlora")
    assert summary["quantization"]["type"] == "nf4"
    assert all(r["loss"] == r["loss"] for r in qlora) and qlora[-1]["loss"] < qlora[0]["loss"]
