"""`llmtune merge` end to end against PEFT + transformers: the merged directory loads in
transformers with the logits of PEFT's base + adapter, its weights equal PEFT's merge_and_unload,
`llmtune eval` on it equals `eval --adapter` on the base, and bad input leaves nothing behind."""
import json
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_model(path, dtype=torch.float32):
    """transformers' model; Gemma 2/3 eagerly (their attention soft-cap exists only there)."""
    import transformers as tf

    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    extra = {"attn_implementation": "eager"} if model_type in ("gemma2", "gemma3_text") else {}
    return tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)


def make_adapter(base, out, *, seed, dora=False, rslora=False, zero_b=False, r=4, alpha=8, targets=TARGETS):
    """A PEFT adapter with random (nonzero) A and B, saved by PEFT itself."""
    import peft

    torch.manual_seed(seed)
    model = load_model(base)
    conv1d = model.config.model_type == "gpt2"  # GPT-2's Conv1D layers: PEFT's fan_in_fan_out
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_dora=dora, use_rslora=rslora,
                          init_lora_weights=bool(zero_b), fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    if not zero_b:
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name and "magnitude" not in name:
                    p.normal_(0.0, 0.2)
                elif "magnitude" in name:
                    p.mul_(1.0 + 0.1 * torch.randn_like(p))
    pm.save_pretrained(out)
    return out


def peft_reference(base, adapter, dtype=torch.float32):
    """(logits of base+adapter on a probe, state dict of merge_and_unload) from PEFT."""
    import peft

    model = load_model(base, dtype)
    pm = peft.PeftModel.from_pretrained(model, adapter)
    ids = torch.arange(3, 3 + 24).remainder(model.config.vocab_size - 3).add(3).unsqueeze(0)
    with torch.no_grad():
        logits = pm(ids).logits.float()
    merged = pm.merge_and_unload()
    return ids, logits, {k: v.detach().clone() for k, v in merged.state_dict().items()}


def load_merged(path):
    return load_model(path)


def errors(r):
    return [l for l in r.err_lines if "error" in l]


@pytest.mark.parametrize("family,kind", [("llama3", "lora"), ("qwen2", "rslora"), ("tinyllama", "dora"), ("gemma", "lora")])
def test_merged_model_equals_peft(llmtune, tmp_path, family, kind):
    base = MODELS / family
    adapter = make_adapter(base, tmp_path / "adapter", seed=7, dora=kind == "dora", rslora=kind == "rslora")
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--dtype", "fp32", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["adapter_modules"] == 2 * len(TARGETS) and report["unchanged_modules"] == 0

    ids, ref_logits, ref_state = peft_reference(base, adapter)
    merged = load_merged(out)
    with torch.no_grad():
        logits = merged(ids).logits.float()
    assert (logits - ref_logits).abs().max().item() < 1e-4
    ours = merged.state_dict()
    for name, ref in ref_state.items():
        assert torch.allclose(ours[name], ref, rtol=1e-6, atol=1e-6), name

    # The files transformers needs sit next to the weights, the dtype is the requested one.
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    for f in ("tokenizer_config.json", "generation_config.json"):
        assert (out / f).exists(), f
    assert (out / "tokenizer.json").exists() or (out / "tokenizer.model").exists()


@pytest.mark.parametrize("family,kind,targets", [
    ("gpt2", "lora", "all-linear"), ("gpt2", "dora", ["c_attn", "c_fc"]), ("phi3", "dora", "all-linear"),
    ("phi4-mini", "rslora", ["qkv_proj", "gate_up_proj"]), ("gemma2", "lora", "all-linear"), ("gemma3", "dora", "all-linear"),
    ("qwen3", "lora", "all-linear"), ("qwen3-tied", "dora", "all-linear"), ("smollm2", "lora", "all-linear")])
def test_merged_families_equal_peft(llmtune, tmp_path, family, kind, targets):
    """Fused projections adapted whole (qkv_proj, gate_up_proj, c_attn) and GPT-2's Conv1D weights,
    merged with the delta transposed into their (in, out) layout, as PEFT's merge_and_unload."""
    base = MODELS / family
    adapter = make_adapter(base, tmp_path / "adapter", seed=7, dora=kind == "dora", rslora=kind == "rslora", targets=targets)
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--dtype", "fp32", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["adapter_modules"] > 0 and report["unchanged_modules"] == 0
    ids, ref_logits, ref_state = peft_reference(base, adapter)
    merged = load_merged(out)
    with torch.no_grad():
        logits = merged(ids).logits.float()
    assert (logits - ref_logits).abs().max().item() < 1e-4 * ref_logits.abs().max().item()
    ours = merged.state_dict()
    assert sorted(ours) == sorted(ref_state)
    for name, ref in ref_state.items():
        assert ours[name].shape == ref.shape and torch.allclose(ours[name], ref, rtol=1e-5, atol=1e-6), name
    # `llmtune eval` on the merged directory equals eval --adapter on the base.
    data = tmp_path / "eval.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    a = llmtune("eval", "--model", base, "--adapter", adapter, "--data", data, "--max-seq-len", "48", "--json")
    b = llmtune("eval", "--model", out, "--data", data, "--max-seq-len", "48", "--json")
    assert a.code == 0 and b.code == 0, a.err + b.err
    assert abs(json.loads(a.out)["loss"] - json.loads(b.out)["loss"]) <= 1e-4 * abs(json.loads(a.out)["loss"])


def test_eval_on_merged_equals_eval_with_adapter(llmtune, tmp_path):
    base = MODELS / "llama3"
    adapter = make_adapter(base, tmp_path / "adapter", seed=3)
    out = tmp_path / "merged"
    assert llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--dtype", "fp32").code == 0
    data = tmp_path / "eval.txt"
    data.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    a = llmtune("eval", "--model", base, "--adapter", adapter, "--data", data, "--max-seq-len", "64", "--json")
    b = llmtune("eval", "--model", out, "--data", data, "--max-seq-len", "64", "--json")
    assert a.code == 0 and b.code == 0, a.err + b.err
    la, lb = json.loads(a.out)["loss"], json.loads(b.out)["loss"]
    assert abs(la - lb) <= 1e-4 * abs(la)


def test_default_dtype_follows_the_base_and_matches_peft_in_bf16(llmtune, tmp_path):
    import transformers as tf

    base = tmp_path / "base-bf16"
    tf.AutoModelForCausalLM.from_pretrained(MODELS / "llama3", dtype=torch.bfloat16).save_pretrained(base)
    for f in (MODELS / "llama3").iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, base / f.name)
    adapter = make_adapter(base, tmp_path / "adapter", seed=11)
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out)
    assert r.code == 0, r.err
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    import peft

    pm = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16), adapter)
    ref = pm.merge_and_unload().state_dict()
    ours = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    for name, t in ref.items():
        assert ours[name].dtype == torch.bfloat16
        assert torch.equal(ours[name], t), name


def test_sharded_output_has_an_index_transformers_reads(llmtune, tmp_path):
    base = MODELS / "llama3"
    adapter = make_adapter(base, tmp_path / "adapter", seed=5)
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--dtype", "fp32", "--shard-size", "200KB")
    assert r.code == 0, r.err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    assert not (out / "model.safetensors").exists()
    for s in shards:  # no shard over the limit unless a single tensor is
        assert (out / s).stat().st_size < 200_000 + 64 * 1024 or len([k for k, v in index["weight_map"].items() if v == s]) == 1
    ids, ref_logits, _ = peft_reference(base, adapter)
    with torch.no_grad():
        assert (load_merged(out)(ids).logits - ref_logits).abs().max().item() < 1e-4


def test_untrained_adapter_is_reported_loudly(llmtune, tmp_path):
    base = MODELS / "llama3"
    adapter = make_adapter(base, tmp_path / "adapter", seed=1, zero_b=True)
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", tmp_path / "merged", "--json")
    assert r.code == 0, r.err
    assert "CHANGES NOTHING" in r.err and "lora_B" in r.err
    assert json.loads(r.out)["zero_b_modules"] == 2 * len(TARGETS)


def test_finetune_run_directory_merges_into_its_base(llmtune, tmp_path):
    run = tmp_path / "run"
    root = Path(os.environ.get("LLMTUNE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
    r = llmtune("finetune", root / "configs" / "demo-lora.yaml", f"output={run}", "train.max_steps=2",
                "eval.max_batches=1", cwd=root, timeout=300)
    assert r.code == 0, r.err
    r = llmtune("merge", "--adapter", run, "--json", cwd=root)
    assert r.code == 0, r.err
    assert Path(json.loads(r.out)["output"]) == run / "merged"
    assert (run / "merged" / "model.safetensors").exists() and (run / "merged" / "chat_template.jinja").exists() or \
        "chat_template" in (run / "merged" / "tokenizer_config.json").read_text()


def test_adapter_for_another_base_names_the_tensor(llmtune, tmp_path):
    adapter = make_adapter(MODELS / "llama3", tmp_path / "adapter", seed=2)
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", MODELS / "gemma", "--adapter", adapter, "--output", out)
    assert r.code == 1
    assert len(errors(r)) == 1 and "model.layers.0" in errors(r)[0] and "another base" in errors(r)[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "adapter"]


def test_existing_output_needs_force(llmtune, tmp_path):
    base = MODELS / "llama3"
    adapter = make_adapter(base, tmp_path / "adapter", seed=2)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out)
    assert r.code == 2 and "--force" in errors(r)[0]
    assert (out / "keep.txt").read_text() == "mine"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--force")
    assert r.code == 0, r.err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", base, "--force")
    assert r.code == 2 and "overwrite" in errors(r)[0]
    assert (base / "config.json").exists()


def test_failed_write_leaves_no_partial_output(llmtune, tmp_path):
    """A full disk, simulated with a file-size limit (writes fail with EFBIG): exit 1, and neither
    the output nor a staging directory is left in its parent."""
    base = MODELS / "llama3"
    adapter = make_adapter(base, tmp_path / "adapter", seed=2)
    parent = tmp_path / "outputs"
    parent.mkdir()
    import subprocess
    from conftest import BIN

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([str(BIN), "merge", "--model", str(base), "--adapter", str(adapter), "--output",
                           str(parent / "merged"), "--dtype", "fp32"], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "error" in proc.stderr
    assert list(parent.iterdir()) == []
