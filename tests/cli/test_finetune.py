"""`llmtune finetune` end to end on the tiny fixtures: the loss curve equals PEFT + transformers +
torch AdamW step for step, the trained adapter loads in PEFT with llmtune eval's perplexity,
SIGTERM / kill -9 + --resume end bit-identical to an uninterrupted run, and bad input is refused
before the run directory appears."""
import json
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import BIN

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"


def chat_rows(n=24):
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i + 3}?"},
                          {"role": "assistant", "content": f"{i} plus {i + 3} is {2 * i + 3}."}]} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_ten_steps_equal_peft_with_torch_adamw(llmtune, tmp_path, kind):
    """One batch holding every row (so batch order cannot matter), 10 AdamW steps with warmup and a
    cosine schedule: llmtune's losses equal PEFT's to 1e-3 relative."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    rows = chat_rows(12)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    steps, lr, wd = 10, 5e-3, 0.01
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", steps,
                f"train.batch_size={len(rows)}", "data.packing=false", f"train.lr={lr}", "train.warmup_steps=2",
                "train.lr_scheduler=cosine", f"train.weight_decay={wd}", "train.max_grad_norm=1.0", "lora.r=4",
                "lora.alpha=8", "lora.dropout=0", f"lora.use_dora={'true' if kind == 'dora' else 'false'}",
                "checkpoint.every_steps=1", "checkpoint.keep=0", "--json", timeout=300)
    assert r.code == 0, r.err
    ours = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert len(ours) == steps

    # The same token ids and labels (tokenize --row is checked against HF elsewhere), right-padded.
    examples = []
    for i in range(len(rows)):
        t = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", data, "--row", i + 1, "--json")
        assert t.code == 0, t.err
        j = json.loads(t.out)
        examples.append((j["input_ids"], j["labels"]))
    width = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([e[0] + [0] * (width - len(e[0])) for e in examples])
    labels = torch.tensor([e[1] + [-100] * (width - len(e[1])) for e in examples])
    mask = torch.tensor([[1] * len(e[0]) + [0] * (width - len(e[0])) for e in examples])

    # The initial adapter: B starts at 0, so step 1 leaves A unchanged; step-1's A is the initial A.
    first = load_file(str(out / "checkpoints" / "step-1" / "trainable.safetensors"))
    base = AutoModelForCausalLM.from_pretrained(str(MODELS / "qwen2"), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            use_dora=kind == "dora", task_type="CAUSAL_LM"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in first.items():
            key = name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
            key = key.replace(".lora_magnitude_vector", ".lora_magnitude_vector.default.weight")
            if ".lora_B." in key:
                params[key].zero_()
            elif ".lora_magnitude_vector" in key:
                pass  # PEFT initialises the magnitude from the same base weights
            else:
                params[key].copy_(t)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=wd, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, 2, steps)
    model.train()
    want = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        want.append(loss.item())
    for i, (a, b) in enumerate(zip(ours, want)):
        assert abs(a - b) <= 1e-3 * abs(b), f"step {i + 1}: llmtune {a} vs PEFT {b}"
    assert want[-1] < want[0]


def test_trained_adapter_loads_in_peft_with_the_same_perplexity(llmtune, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(16))
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "llama3", "--data", data, "--output", out, "--max-steps", 8,
                "train.lr=5e-3", "lora.use_rslora=true", "--json", timeout=300)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["steps"] == 8 and json.loads((out / "summary.json").read_text())["steps"] == 8
    for f in ("config.yaml", "metrics.jsonl", "train.log", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (out / f).exists(), f
    texts = ["What is 7 plus 10? 7 plus 10 is 17.", "A line of plain text for the evaluation."]
    evald = write_jsonl(tmp_path / "eval.jsonl", [{"text": t} for t in texts])
    r = llmtune("eval", "--model", MODELS / "llama3", "--adapter", out / "adapter", "--data", evald, "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)

    tok = AutoTokenizer.from_pretrained(str(MODELS / "llama3"))
    base = AutoModelForCausalLM.from_pretrained(str(MODELS / "llama3"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    want = math.exp(total / count)
    assert abs(ours["perplexity"] - want) <= 1e-4 * want


def start(args):
    return subprocess.Popen([str(BIN), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wait_for_step(out, step, proc, timeout=240):
    metrics = out / "metrics.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if metrics.exists():
            lines = [l for l in metrics.read_text().splitlines() if l.strip()]
            if lines and json.loads(lines[-1]).get("step", 0) >= step:
                return True
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the run")


def test_sigterm_and_kill9_then_resume_is_bit_identical(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(40))
    common = ["--model", MODELS / "qwen2", "--data", data, "--max-steps", 14, "train.batch_size=2", "train.lr=3e-3",
              "lora.dropout=0.1", "train.grad_accum_steps=2", "checkpoint.every_steps=3", "checkpoint.keep=2",
              "train.warmup_steps=2"]
    ref = tmp_path / "ref"
    r = llmtune("finetune", *common, "--output", ref, timeout=300)
    assert r.code == 0, r.err
    want = load_file(str(ref / "adapter" / "adapter_model.safetensors"))

    rng = random.Random(1234)
    out = tmp_path / "run"
    # 1. SIGTERM at a random step: finishes the step, checkpoints, exits 0 and prints the resume command.
    proc = start(["finetune", *common, "--output", out])
    assert wait_for_step(out, rng.randint(2, 5), proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "--resume" in stderr and "SIGTERM" in stderr
    assert not (out / "adapter").exists()
    # 2. Resume, then kill -9 at a later random step: only complete checkpoints remain.
    proc = start(["finetune", *common, "--output", out, "--resume"])
    assert wait_for_step(out, rng.randint(7, 10), proc)
    proc.kill()
    proc.wait()
    for step_dir in (out / "checkpoints").iterdir():
        if step_dir.name.startswith("step-"):
            assert (step_dir / "state.json").exists() and (step_dir / "trainable.safetensors").exists()
            load_file(str(step_dir / "trainable.safetensors"))
            load_file(str(step_dir / "optimizer.safetensors"))
    # 3. Resume from the latest complete checkpoint to the end.
    r = llmtune("finetune", *common, "--output", out, "--resume", timeout=300)
    assert r.code == 0, r.err
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == list(range(1, 15))


def test_existing_run_needs_resume(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(4))
    out = tmp_path / "run"
    args = ["finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1]
    assert llmtune(*args).code == 0
    r = llmtune(*args)
    assert r.code == 2 and len(errors(r)) == 1 and "--resume" in errors(r)[0]
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", tmp_path / "fresh", "--resume")
    assert r.code == 1 and len(errors(r)) == 1 and "no checkpoint" in errors(r)[0]


def test_full_finetune_from_random_init_writes_a_transformers_model(llmtune, tmp_path):
    from transformers import AutoModelForCausalLM
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": f"Sentence number {i} about counting."} for i in range(16)])
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "llama3", "--data", data, "--output", out, "--max-steps", 6,
                "method=full", "model.init=random", "train.lr=1e-2", "full.freeze=[embed_tokens]", "--json", timeout=300)
    assert r.code == 0, r.err
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert losses[-1] < losses[0]
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8]])
    evald = write_jsonl(tmp_path / "e.jsonl", [{"text": "Sentence number 3 about counting."}])
    r = llmtune("eval", "--model", out / "model", "--data", evald, "--json")
    assert r.code == 0, r.err
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(out / "model"))
    t = torch.tensor([tok("Sentence number 3 about counting.")["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=t, labels=t).loss.item()
    assert abs(json.loads(r.out)["loss"] - want) <= 1e-4 * want
    # The frozen embedding is the random init's, untouched by training: same as a second run's.
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


BAD_INPUT = [
    # (rows or raw text, extra args, text the error must contain)
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [\n', [], "d.jsonl:2"),
    ([{"messages": [{"role": "user"}]}], [], "content"),
    ("", [], "empty"),
    ([{"messages": [{"role": "user", "content": "only a question"}]}], [], "d.jsonl:1"),
    (None, ["lora.target_modules=[nonexistent_proj]"], "nonexistent_proj"),
    (None, ["lora.r=0"], "lora.r"),
    (None, ["train.lr=0"], "train.lr"),
    (None, ["train.lr=-1"], "train.lr"),
    (None, ["data.format=csv"], "data.format"),
    (None, ["lora.dropout=1.5"], "lora.dropout"),
    # Another method's settings would be ignored: refused, naming the key and the method.
    (None, ["method=full", "lora.r=8"], "lora.r is set"),
    (None, ["full.freeze=[embed_tokens]"], "full.freeze is set"),
    (None, ["method=ia3"], "method"),
]


@pytest.mark.parametrize("rows,extra,needle", BAD_INPUT)
def test_bad_input_is_refused_before_training(llmtune, tmp_path, rows, extra, needle):
    path = tmp_path / "d.jsonl"
    if rows is None:
        write_jsonl(path, chat_rows(4))
    elif isinstance(rows, str):
        path.write_text(rows)
    else:
        write_jsonl(path, rows)
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", path, "--output", out, "--max-steps", 2, *extra)
    assert r.code != 0
    assert len(errors(r)) == 1, r.err
    assert needle in errors(r)[0], errors(r)[0]
    assert not out.exists(), "nothing may be written before training starts"


def test_skip_bad_rows_counts_them(llmtune, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(4)) + "{not json\n")
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", path, "--output", tmp_path / "run", "--max-steps", 1,
                "data.skip_bad_rows=true")
    assert r.code == 0, r.err
    assert "1 bad row" in r.err or "skipped 1" in r.err


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name != "common.yaml"))
def test_presets_are_valid_configs(llmtune, preset):
    """Every preset names its command on its first line and resolves against that command's schema
    (no unknown key, no bad value)."""
    text = (ROOT / "configs" / preset).read_text()
    first = text.splitlines()[0].split()
    assert first[:2] == ["#", "llmtune"] and first[3:4] == ["configs/" + preset], first
    command = first[2]
    if command == "sweep":  # checked by each run's command, runs listed and nothing written
        r = llmtune("sweep", ROOT / "configs" / preset, "--dry-run")
        assert r.code == 0, r.err
        return
    extra = ["data.path=x.jsonl"] if command == "finetune" else []
    r = llmtune(command, ROOT / "configs" / preset, *extra, "--print-config")
    assert r.code == 0, r.err
    assert "model" in r.out
