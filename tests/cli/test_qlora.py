"""QLoRA through the real binary: `method: qlora` (LoRA/DoRA over a base quantized to NF4 + double
quant while it loads, or model.quantize's choice) with the usual run directory and every finetune
feature; the summary's quantization and memory figures against what transformers + bitsandbytes hold
for the same base; the adapter PEFT loads over a bitsandbytes base with `llmtune eval`'s perplexity;
resume refused over another quantization; the presets. (Loss, gradients and 10 training steps
against PEFT over Linear4bit are in tests/quant/test_qlora_parity.cpp.)"""
import json
import math
import os
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODEL = FIXTURES / "models" / "qwen2"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Say {w}.", "output": f"{w} {w}."} for w in ("one", "two", "three", "four")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    return path


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


def bnb_model(model_dir, quant_type="nf4", double_quant=True):
    """transformers + bitsandbytes loading the fixture in 4 bits on the CPU, fp32 compute."""
    import torch._dynamo
    torch._dynamo.config.disable = True  # bitsandbytes' torch.compile'd CPU ops: slow to compile, same numbers
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                                bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=config, dtype=torch.float32,
                                                device_map="cpu")


@pytest.mark.parametrize("extra", [["method=qlora"],
                                   ["model.quantize=fp4", "model.double_quant=false", "lora.use_dora=true",
                                    "train.grad_checkpointing=true"]])
def test_qlora_trains_and_resumes(llmtune, data, tmp_path, extra):
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 3, "--device", "cpu",
                "checkpoint.every_steps=2", *extra, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    assert any("base quantized to" in l for l in r.err_lines)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(l) for l in losses)
    r = llmtune("finetune", out / "config.yaml", "--resume", "train.max_steps=4")
    assert r.code == 0, r.err
    assert json.loads((out / "summary.json").read_text())["steps"] == 4


def test_method_qlora_defaults_and_the_memory_it_reports(llmtune, data, tmp_path):
    """method qlora alone: nf4, double quant, blocks of 64, compute fp32 on the CPU (dtype auto); the
    adapter is a plain PEFT LoRA adapter; the summary's bytes equal what bitsandbytes holds."""
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 2, "--device", "cpu",
                "method=qlora", "--json")
    assert r.code == 0, r.err
    q = json.loads(r.out)["quantization"]
    assert json.loads((out / "summary.json").read_text())["quantization"] == q
    assert (q["type"], q["double_quant"], q["blocksize"], q["compute_dtype"]) == ("nf4", True, 64, "fp32")
    assert q["source"] == "quantized while loading"
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and "quantization_config" not in cfg

    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM
    dense = AutoModelForCausalLM.from_pretrained(str(MODEL), dtype=torch.float32)
    assert q["base_parameters"] == dense.num_parameters()
    assert q["base_bytes_16bit"] == 2 * dense.num_parameters()
    model = bnb_model(MODEL)
    held, dense_size, n = 0, 0, 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            tensors = [module.weight.data, qs.absmax, qs.state2.absmax, qs.state2.code]
            bias = [module.bias] if module.bias is not None else []
            held += sum(t.numel() * t.element_size() for t in tensors + bias)
            dense_size += 2 * (qs.shape.numel() + sum(b.numel() for b in bias))
            n += 1
    assert q["quantized_linears"] == n
    assert q["quantized_bytes_held"] == held
    assert q["quantized_bytes_16bit"] == dense_size
    assert q["bytes_saved"] == dense_size - held > 0
    # The rest of the base (embeddings, norms) is held in the compute dtype.
    assert q["base_bytes_held"] == held + 4 * (dense.num_parameters() - dense_size // 2)

    # The line people read says the same.
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", tmp_path / "run2", "--max-steps", 1,
                "--device", "cpu", "method=qlora")
    assert r.code == 0, r.err
    assert "base nf4: its quantized linears in" in r.out and "saved" in r.out


def test_every_finetune_feature_over_a_4bit_base(llmtune, tmp_path):
    """Validation split with evaluation during and after, unpacked and packed rows with masked
    prompts, gradient checkpointing, checkpoints kept, a DoRA adapter."""
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i + 3}?"},
                          {"role": "assistant", "content": f"{i} plus {i + 3} is {2 * i + 3}."}]} for i in range(24)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for packing in ("true", "false"):
        out = tmp_path / f"run-{packing}"
        r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 4, "--device", "cpu",
                    "method=qlora", "lora.use_dora=true", f"data.packing={packing}", "data.val_fraction=0.25",
                    "eval.every_steps=2", "train.grad_checkpointing=true", "checkpoint.every_steps=2", "checkpoint.keep=0",
                    "train.batch_size=3", "train.grad_accum_steps=2", "--json")
        assert r.code == 0, r.err
        summary = json.loads(r.out)
        assert math.isfinite(summary["eval_loss"]) and summary["quantization"]["type"] == "nf4"
        records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in records if "eval_loss" in x] == [2, 4]
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
        state = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())
        assert state["quantization"] == {"type": "nf4", "double_quant": True, "blocksize": 64}


@pytest.mark.parametrize("change", [["model.quantize=fp4"], ["model.double_quant=false"], ["model.quant_blocksize=128"],
                                   ["method=lora"]])
def test_resume_over_another_quantization_is_refused(llmtune, data, tmp_path, change):
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 2, "--device", "cpu",
                "method=qlora", "checkpoint.every_steps=1")
    assert r.code == 0, r.err
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for steps in (2, 4):  # a finished run, and one that would continue
        r = llmtune("finetune", out / "config.yaml", "--resume", f"train.max_steps={steps}", *change)
        assert r.code != 0, r.err
        lines = errors(r)
        assert len(lines) == 1 and "an adapter trained on a different quantization" in lines[0], r.err
        assert "nf4 (double-quantized absmax, blocks of 64)" in lines[0]
        after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after == before, "a refused resume changed the run directory"


def test_trained_adapter_loads_in_peft_over_bitsandbytes_with_eval_perplexity(llmtune, tmp_path):
    """A QLoRA adapter (trained over nf4 + double quant) evaluated over the fixture quantized to NF4
    by `llmtune eval --quantize nf4` and by transformers + bitsandbytes (byte-identical without double
    quant) with PEFT on top: the same perplexity."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    model_dir = FIXTURES / "models" / "llama3"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i + 3}?"},
                          {"role": "assistant", "content": f"{i} plus {i + 3} is {2 * i + 3}."}]} for i in range(16)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", model_dir, "--data", data, "--output", out, "--max-steps", 8, "--device", "cpu",
                "method=qlora", "train.lr=5e-3", "--json", timeout=300)
    assert r.code == 0, r.err
    texts = ["What is 7 plus 10? 7 plus 10 is 17.", "A line of plain text for the evaluation."]
    evald = tmp_path / "eval.jsonl"
    evald.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    r = llmtune("eval", "--model", model_dir, "--adapter", out / "adapter", "--data", evald, "--quantize", "nf4",
                "--device", "cpu", "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)["perplexity"]

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = bnb_model(model_dir, "nf4", double_quant=False)
    model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    # Gradients on from the embeddings: bitsandbytes' dequantize-then-matmul path (its no-grad CPU
    # kernel, gemm_4bit, computes other numbers), as QLoRA trains through.
    model.enable_input_require_grads()
    total, count = 0.0, 0
    with torch.enable_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    want = math.exp(total / count)
    assert abs(ours - want) <= 1e-4 * want, f"llmtune eval {ours} vs PEFT over bitsandbytes {want}"
    # The adapter changed the model, or the comparison proves little.
    r = llmtune("eval", "--model", model_dir, "--data", evald, "--quantize", "nf4", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    assert abs(json.loads(r.out)["perplexity"] - ours) > 1e-3 * ours


@pytest.mark.parametrize("extra,needle", [
    (["model.quantize=nf4", "method=full"], "needs an adapter method"),
    (["model.quantize=nf4", "model.quant_blocksize=48"], "not a power of two"),
    (["model.quantize=int3"], "model.quantize"),
    (["method=qlora", "model.quantize=none"], "method qlora trains over a 4-bit base"),
    (["model.double_quant=false"], "the base is not quantized"),
    (["method=qlora", "model.init=random"], "does not go with model.init: random"),
])
def test_qlora_settings_that_cannot_work_are_refused(llmtune, data, tmp_path, extra, needle):
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 1, *extra)
    assert r.code == 2, r.err
    lines = errors(r)
    assert len(lines) == 1 and needle in lines[0], r.err
    assert not out.exists()


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*qlora*.yaml")))
def test_qlora_presets_resolve_to_qlora(llmtune, preset):
    text = (ROOT / "configs" / preset).read_text()
    assert text.startswith("# llmtune finetune configs/" + preset)
    r = llmtune("finetune", ROOT / "configs" / preset, "data.path=x.jsonl", "--print-config")
    assert r.code == 0, r.err
    assert "method: qlora" in r.out
    assert "all-linear" in r.out


def test_demo_qlora_preset_trains(llmtune, tmp_path):
    """configs/demo-qlora.yaml on the bundled demo model, cut to a few steps."""
    out = tmp_path / "demo"
    r = llmtune("finetune", ROOT / "configs" / "demo-qlora.yaml", f"output={out}", "train.max_steps=4", "eval.every_steps=0",
                "checkpoint.every_steps=0", "--device", "cpu", "--json", cwd=ROOT, timeout=300)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["quantization"]["type"] == "nf4" and summary["quantization"]["bytes_saved"] > 0
    assert math.isfinite(summary["eval_loss"])


def test_env_reports_4bit_support(llmtune):
    r = llmtune("env", "--json")
    assert r.code == 0, r.err
    q = json.loads(r.out)["quantization"]
    assert q["formats"] == ["nf4", "fp4", "int8"] and q["format_family"] == "bitsandbytes"
    assert isinstance(q["four_bit_cuda_kernels"], bool) and q["four_bit_cuda_kernels_reason"]
    r = llmtune("env")
    assert "quantization" in r.out and "nf4/fp4/int8" in r.out


def test_a_bitsandbytes_checkpoint_trains_as_stored(llmtune, data, tmp_path):
    """A directory transformers saved in 4 bits (BitsAndBytesConfig, nf4 + double quant) is the base
    as it is stored: the summary says so, with bitsandbytes' bytes; settings that contradict it are refused."""
    import shutil
    import bitsandbytes as bnb
    model = bnb_model(MODEL, "nf4", double_quant=True)
    saved = tmp_path / "bnb"
    model.save_pretrained(str(saved))
    for f in MODEL.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, saved / f.name)
    held = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            tensors = [module.weight.data, qs.absmax, qs.state2.absmax, qs.state2.code]
            tensors += [module.bias] if module.bias is not None else []
            held += sum(t.numel() * t.element_size() for t in tensors)
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", saved, "--data", data, "--output", out, "--max-steps", 2, "--device", "cpu",
                "method=qlora", "--json")
    assert r.code == 0, r.err
    q = json.loads(r.out)["quantization"]
    assert (q["type"], q["double_quant"], q["blocksize"], q["source"]) == ("nf4", True, 64, "bitsandbytes checkpoint")
    assert q["quantized_bytes_held"] == held
    for extra, needle in ((["model.quantize=fp4"], "already a bitsandbytes 4-bit checkpoint"),
                          (["method=full"], "method full trains 16-bit weights")):
        r = llmtune("finetune", "--model", saved, "--data", data, "--output", tmp_path / "bad", "--max-steps", 1, *extra)
        assert r.code == 2, r.err
        lines = errors(r)
        assert len(lines) == 1 and needle in lines[0], r.err
        assert not (tmp_path / "bad").exists()
