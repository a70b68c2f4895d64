"""`llmtune finetune`, `merge` and `quantize` end to end on the families whose layout differs from
Llama's: GPT-2 (Conv1D weights stored (in, out), fused c_attn, PEFT's fan_in_fan_out) and Phi-3
(fused qkv_proj / gate_up_proj). A trained adapter is the one PEFT loads (with llmtune eval's
loss), merges as PEFT merges it, a fully fine-tuned model is written in transformers' layout, and
a bitsandbytes GPT-2 is what transformers writes; a target list naming modules the family lacks is
refused naming the ones it has."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

from test_bnb_quantize import assert_same_checkpoint, dequantized_peft_merge, transformers_save
from test_merge import load_model, make_adapter

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
TEXTS = [f"Line {i}: the quick brown fox counts {i} sheep." for i in range(16)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def transformers_loss(model, texts, tok):
    """Token-weighted mean next-token loss over texts, one row each."""
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


@pytest.mark.parametrize("family,extra", [("gpt2", []), ("gpt2", ["lora.use_dora=true"]), ("phi3", [])])
def test_trained_adapter_loads_and_merges_as_peft(llmtune, tmp_path, family, extra):
    from peft import PeftModel
    from transformers import AutoTokenizer

    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    evald = write_jsonl(tmp_path / "e.jsonl", [{"text": t} for t in TEXTS[:3]])
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / family, "--data", data, "--output", out, "--max-steps", 3,
                "train.lr=1e-2", "lora.r=4", "lora.dropout=0", *extra, "--json", timeout=300)
    assert r.code == 0, r.err
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (family == "gpt2")
    modules = {m.rsplit(".", 1)[-1] for m in config["target_modules"]}
    assert modules == ({"c_attn", "c_proj", "c_fc"} if family == "gpt2" else {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})

    r = llmtune("eval", "--model", MODELS / family, "--adapter", out / "adapter", "--data", evald, "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)["loss"]
    tok = AutoTokenizer.from_pretrained(str(MODELS / family))
    model = PeftModel.from_pretrained(load_model(MODELS / family), str(out / "adapter")).eval()
    assert abs(ours - transformers_loss(model, TEXTS[:3], tok)) <= 1e-4 * ours

    r = llmtune("merge", "--adapter", out, "--dtype", "fp32", "--json")
    assert r.code == 0, r.err
    merged = load_model(out / "merged").eval()
    assert abs(ours - transformers_loss(merged, TEXTS[:3], tok)) <= 1e-4 * ours
    ref = model.merge_and_unload().state_dict()
    for name, t in merged.state_dict().items():
        assert t.shape == ref[name].shape and torch.allclose(t, ref[name], rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("family", ["gpt2", "phi3"])
def test_full_finetune_writes_transformers_layout(llmtune, tmp_path, family):
    """The final evaluation runs on the trained model in memory; transformers' loss on the written
    directory equals it only if every weight went back in its layout (GPT-2's square c_proj
    included, which a shape check alone would not catch)."""
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    evald = write_jsonl(tmp_path / "e.jsonl", [{"text": t} for t in TEXTS[:3]])
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / family, "--data", data, "--output", out, "--max-steps", 3,
                "method=full", "train.lr=1e-2", f"data.val_path={evald}", "data.packing=false", "--json", timeout=300)
    assert r.code == 0, r.err
    in_memory = json.loads(r.out)["eval_loss"]
    # The validation rows as finetune tokenized them (EOS appended), scored by transformers.
    rows = []
    for i in range(3):
        t = llmtune("tokenize", "--model", out / "model", "--data", evald, "--row", i + 1, "--json")
        assert t.code == 0, t.err
        rows.append(json.loads(t.out))

    def loss_of(model):
        total, count = 0.0, 0
        with torch.no_grad():
            for row in rows:
                ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
                n = (labels[:, 1:] != -100).sum().item()
                total += model(input_ids=ids, labels=labels).loss.item() * n
                count += n
        return total / count

    base_loss = loss_of(load_model(MODELS / family).eval())
    saved_loss = loss_of(load_model(out / "model").eval())
    assert abs(saved_loss - base_loss) > 1e-3 * base_loss, "training changed nothing"
    assert abs(saved_loss - in_memory) <= 1e-4 * in_memory, (saved_loss, in_memory)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_gpt2_bitsandbytes_is_what_transformers_writes_and_merges(llmtune, tmp_path, kind):
    """transformers quantizes Conv1D weights transposed to (out, in): so do we; merging an adapter
    into such a base writes the dense (in, out) layout back."""
    src = MODELS / "gpt2"
    out = tmp_path / "ours"
    r = llmtune("quantize", "--model", src, "--output", out, "--type", kind, "--json")
    assert r.code == 0, r.err
    ref = transformers_save(src, tmp_path / "ref", kind)
    assert_same_checkpoint(out, ref, kind)

    adapter = make_adapter(src, tmp_path / "adapter", seed=3, targets=["c_attn", "c_proj"])
    merged = tmp_path / "merged"
    r = llmtune("merge", "--model", ref, "--adapter", adapter, "--output", merged, "--dtype", "fp32", "--json")
    assert r.code == 0, r.err
    from safetensors.torch import load_file
    weights = load_file(str(merged / "model.safetensors"))
    assert weights["transformer.h.0.attn.c_attn.weight"].shape == (64, 192)
    model = load_model(merged).eval()
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    # PEFT over transformers' dequantized base (its layers there may be (out, in) nn.Linear).
    ref_model = dequantized_peft_merge(ref, adapter, torch.float32).eval()
    ref_state, modules = ref_model.state_dict(), dict(ref_model.named_modules())
    for name, t in weights.items():
        linear = type(modules.get(name.removesuffix(".weight"))).__name__ == "Linear" and name != "lm_head.weight"
        want = ref_state[name].t() if linear else ref_state[name]
        assert torch.allclose(t, want, rtol=1e-5, atol=1e-5 * want.abs().max().item()), name
    ids = torch.arange(3, 27).unsqueeze(0)
    with torch.no_grad():
        a, b = model(ids).logits, ref_model(ids).logits
    assert (a - b).abs().max().item() <= 1e-4 * b.abs().max().item()


@pytest.mark.parametrize("family,targets,needles", [
    ("gpt2", "[q_proj,v_proj]", ["gpt2", "c_attn", "c_fc"]),
    ("phi3", "[q_proj,k_proj,v_proj,o_proj]", ["q_proj, k_proj, v_proj", "phi3", "qkv_proj", "gate_up_proj"])])
def test_targets_the_family_lacks_are_refused_naming_its_modules(llmtune, tmp_path, family, targets, needles):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / family, "--data", data, "--output", out, "--max-steps", 1,
                f"lora.target_modules={targets}")
    assert r.code == 2 and len(errors(r)) == 1, r.err
    for needle in needles:
        assert needle in errors(r)[0], errors(r)[0]
    assert not out.exists()


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_pruned_gpt2_keeps_the_conv1d_layout(llmtune, tmp_path, method):
    """Row pruning runs on (out, in) rows; the result is written back (in, out): every kept weight is
    the original at the same place (the square c_proj included), and rows of the (out, in) weight
    keep the same count."""
    from safetensors.torch import load_file

    calib = tmp_path / "calib.txt"
    calib.write_text("".join(f"The cat sat on mat {i}, and then it rained all day long.\n" for i in range(30)))
    out = tmp_path / "pruned"
    r = llmtune("prune", "--model", MODELS / "gpt2", "--output", out, "--method", method, "--sparsity", "0.5",
                "--calibration", calib, "--calibration-samples", "4", "--seq-len", "16", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    before = load_file(str(MODELS / "gpt2" / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    pruned = 0
    for name, w in before.items():
        if not name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            assert torch.equal(after[name], w), name
            continue
        kept = after[name] != 0
        assert after[name].shape == w.shape and torch.equal(after[name][kept], w[kept]), name
        per_row = kept.sum(0)  # Conv1D (in, out): an output row of W is a column here
        assert (per_row == per_row[0]).all() and per_row[0] == w.shape[0] // 2, name
        pruned += 1
    assert pruned == 8
    model = load_model(out)
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(3, 20).unsqueeze(0)).logits).all()


def test_gpt2_checkpoint_without_the_transformer_prefix_merges(llmtune, tmp_path):
    """openai-community/gpt2's own file names its tensors "h.0.attn.c_attn.weight" (no
    "transformer."); PEFT's adapter keys have the prefix. The merged file keeps the base's names."""
    import shutil
    from safetensors.torch import load_file, save_file

    base = tmp_path / "gpt2-hub"
    shutil.copytree(MODELS / "gpt2", base)
    state = load_file(str(base / "model.safetensors"))
    save_file({k.removeprefix("transformer."): v for k, v in state.items()}, str(base / "model.safetensors"),
              metadata={"format": "pt"})
    adapter = make_adapter(MODELS / "gpt2", tmp_path / "adapter", seed=4, targets=["c_attn", "c_proj", "c_fc"])
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--dtype", "fp32", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["unchanged_modules"] == 0
    merged = load_file(str(out / "model.safetensors"))
    assert "h.0.attn.c_attn.weight" in merged and not any(k.startswith("transformer.") for k in merged)
    from test_merge import peft_reference
    ids, ref_logits, _ = peft_reference(MODELS / "gpt2", adapter)
    with torch.no_grad():
        logits = load_model(out)(ids).logits
    assert (logits - ref_logits).abs().max().item() < 1e-4 * ref_logits.abs().max().item()
