"""`llmtune prune` end to end: the pruned directory loads in transformers with the logits and the
perplexity llmtune computes on it, masks reach their targets exactly (per row, N:M groups), the
report says what was done, and bad input fails in one line with nothing written."""
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("".join(f"The cat number {i} sat on the mat, and then it rained all day long.\n" for i in range(40)))
    return path


def pruned_linears(out):
    from safetensors.torch import load_file
    tensors = {}
    for f in sorted(Path(out).glob("*.safetensors")):
        tensors.update(load_file(f))
    return {k: v for k, v in tensors.items() if any(f".{n}.weight" in k for n in LINEARS)}, tensors


def errors(r):
    return [l for l in r.err_lines if "error" in l]


def test_wanda_output_loads_in_transformers_with_our_logits_and_perplexity(llmtune, tmp_path, calib):
    import transformers as tf

    out = tmp_path / "pruned"
    r = llmtune("prune", "--model", MODELS / "llama3", "--output", out, "--method", "wanda", "--sparsity", "0.5",
                "--calibration", calib, "--calibration-samples", "8", "--seq-len", "32", "--eval-data", calib,
                "--eval-max-seq-len", "64", "--device", "cpu")
    assert r.code == 0, r.err
    assert "recover quality" in r.out and f"llmtune finetune --model {out}" in r.out
    report = json.loads((out / "prune_report.json").read_text())
    assert report["method"] == "wanda" and report["target"] == "50%"
    assert report["calibration"]["sequences"] == 8 and report["calibration"]["seq_len"] == 32
    assert len(report["calibration"]["starts"]) == 8
    assert report["nonzero_after"] < report["nonzero_before"]
    assert report["eval"]["perplexity_after"] > 0 and report["eval"]["perplexity_before"] > 0
    for m in report["modules"]:
        assert m["sparsity"] == 0.5, m
    assert set(report["sparsity_by_type"]) == {f"self_attn.{n}" for n in LINEARS[:4]} | {f"mlp.{n}" for n in LINEARS[4:]}

    # Exactly half of every row of every decoder linear is zero; the rest of the model is the base's.
    linears, tensors = pruned_linears(out)
    assert len(linears) == 2 * 7
    for name, w in linears.items():
        assert ((w == 0).sum(1) == w.shape[1] // 2).all(), name
    _, base = pruned_linears(MODELS / "llama3")
    for name, t in tensors.items():
        if name not in linears:
            assert torch.equal(t, base[name]), name

    # transformers loads it; its logits equal llmtune's (through eval's loss on the same windows).
    model = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(out)
    ids = tok(calib.read_text(), return_tensors="pt").input_ids[:, :64]
    ev = llmtune("eval", "--model", out, "--data", calib, "--max-seq-len", "64", "--device", "cpu", "--json")
    assert ev.code == 0, ev.err
    ours = json.loads(ev.out)
    with torch.no_grad():
        # eval's first window is the first 64 tokens; all windows together give its loss.
        stream = tok(calib.read_text(), return_tensors="pt").input_ids[0]
        total, count = 0.0, 0
        for start in range(0, len(stream) - 1, 64):
            window = stream[start:start + 64].unsqueeze(0)
            if window.shape[1] < 2:
                continue
            loss = model(input_ids=window, labels=window).loss.item()
            total += loss * (window.shape[1] - 1)
            count += window.shape[1] - 1
    assert ids.shape[1] == 64
    assert ours["tokens"] == count
    assert abs(ours["loss"] - total / count) <= 1e-4 * abs(total / count)
    assert abs(report["eval"]["loss_after"] - total / count) <= 1e-4 * abs(total / count)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_patterns(llmtune, tmp_path, calib, method, pattern):
    n, m = map(int, pattern.split(":"))
    out = tmp_path / "nm"
    args = ["prune", "--model", MODELS / "qwen2", "--output", out, "--method", method, "--pattern", pattern, "--json"]
    if method != "magnitude":
        args += ["--calibration", calib, "--calibration-samples", "4", "--seq-len", "32"]
    r = llmtune(*args)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["target"] == pattern
    linears, _ = pruned_linears(out)
    for name, w in linears.items():
        zeros = (w.reshape(w.shape[0], -1, m) == 0).sum(-1)
        assert (zeros >= m - n).all(), name


def test_magnitude_per_layer_and_skip(llmtune, tmp_path):
    out = tmp_path / "mag"
    r = llmtune("prune", "--model", MODELS / "mistral", "--output", out, "--method", "magnitude", "--sparsity", "0.3",
                "--scope", "layer", "--skip", "mlp.down_proj,model.layers.0.self_attn.q_proj", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert sorted(report["skipped"]) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
                                         "model.layers.1.mlp.down_proj"]
    linears, _ = pruned_linears(out)
    _, base = pruned_linears(MODELS / "mistral")
    for name, w in linears.items():
        if name.removesuffix(".weight") in report["skipped"]:
            assert torch.equal(w, base[name]), name
        else:
            assert (w == 0).sum() == int(w.numel() * 0.3), name
            # Per layer: the lowest magnitudes of the whole matrix went, whatever row they were in.
            kept, gone = base[name].abs()[w != 0], base[name].abs()[w == 0]
            assert gone.max() <= kept.min(), name


def test_config_file_and_print_config(llmtune, tmp_path, calib):
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(f"model: {MODELS / 'gemma'}\noutput: {tmp_path / 'g'}\nmethod: wanda\nsparsity: 0.25\n"
                   f"calibration: {calib}\ncalibration_samples: 2\nseq_len: 16\n")
    r = llmtune("prune", cfg, "--print-config")
    assert r.code == 0 and "method: wanda" in r.out and not (tmp_path / "g").exists()
    r = llmtune("prune", cfg, "sparsity=0.75", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["target"] == "75%"
    assert json.loads((tmp_path / "g" / "prune_report.json").read_text())["target"] == "75%"


def quantized_copy(tmp_path):
    q = tmp_path / "quantized"
    shutil.copytree(MODELS / "llama3", q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (q / "config.json").write_text(json.dumps(cfg))
    return q


@pytest.mark.parametrize("extra, code, message", [
    (["--method", "magnitude", "--sparsity", "1.0"], 2, "outside [0, 1)"),
    (["--method", "magnitude", "--sparsity", "-0.1"], 2, "outside [0, 1)"),
    (["--method", "magnitude", "--pattern", "4:2"], 2, "1 <= N < M"),
    (["--method", "magnitude", "--pattern", "2:2"], 2, "1 <= N < M"),
    (["--method", "magnitude", "--pattern", "2-4"], 2, "not an N:M pattern"),
    (["--method", "magnitude", "--pattern", "2:4", "--sparsity", "0.5"], 2, "not both"),
    (["--method", "lottery"], 2, "method"),
    (["--method", "wanda"], 2, "calibration: required"),
    (["--method", "wanda", "--calibration", "CALIB", "--seq-len", "4000"], 2, "max_position_embeddings"),
    (["--method", "wanda", "--calibration", "SHORT", "--seq-len", "64"], 1, "shorter than one calibration sequence"),
    (["--method", "magnitude", "--skip", "mlp.nothing"], 2, "skip: 'mlp.nothing' names no linear"),
    (["--method", "sparsegpt", "--calibration", "CALIB", "--scope", "layer"], 2, "scope"),
    (["--method", "magnitude", "--model", "QUANTIZED"], 1, "quantized"),
])
def test_bad_input_one_line_nothing_written(llmtune, tmp_path, calib, extra, code, message):
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    subst = {"CALIB": calib, "SHORT": short}
    extra = [subst.get(a, a) for a in extra]
    if "QUANTIZED" in extra:
        extra[extra.index("QUANTIZED")] = quantized_copy(tmp_path)
    args = ["prune", "--output", tmp_path / "out", *extra]
    if "--model" not in extra:
        args += ["--model", MODELS / "llama3"]
    r = llmtune(*args)
    assert r.code == code, (r.code, r.err)
    assert len(errors(r)) == 1 and message in errors(r)[0], r.err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


def test_existing_output_needs_force(llmtune, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = llmtune("prune", "--model", MODELS / "llama3", "--output", out, "--method", "magnitude")
    assert r.code == 2 and "--force" in errors(r)[0]
    assert (out / "keep.txt").exists()
    r = llmtune("prune", "--model", MODELS / "llama3", "--output", out, "--method", "magnitude", "--force")
    assert r.code == 0, r.err
    assert not (out / "keep.txt").exists() and (out / "prune_report.json").exists()


# Structured methods: a smaller ordinary model that transformers, GGUF export, infer and finetune take.

def structured_args(method, model="llama3"):
    if method == "layers":
        return ["--model", MODELS / model, "--method", "layers", "--remove-layers", "1"]
    return ["--model", MODELS / model, "--method", "width", "--num-attention-heads", "2", "--intermediate-size", "64"]


@pytest.mark.parametrize("method", ["layers", "width"])
def test_structured_output_exports_to_gguf_and_infers(llmtune, tmp_path, calib, method):
    import gguf
    import transformers as tf

    out = tmp_path / "small"
    r = llmtune("prune", *structured_args(method), "--output", out, "--calibration", calib, "--calibration-samples", "4",
                "--seq-len", "32", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    cfg = json.loads((out / "config.json").read_text())
    base_cfg = json.loads((MODELS / "llama3" / "config.json").read_text())
    s = report["structured"]
    assert report["parameters_after"] < report["parameters"] and report["bytes"] < report["bytes_before"]
    if method == "layers":
        assert cfg["num_hidden_layers"] == 1 and len(s["removed_layers"]) == 1 and len(s["block_influence"]) == 2
    else:
        assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) == (2, 2, 64)
        assert cfg["head_dim"] == base_cfg["hidden_size"] // base_cfg["num_attention_heads"]
    model = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == report["parameters_after"]

    gg = tmp_path / "small.gguf"
    r = llmtune("quantize", "--model", out, "--output", gg, "--type", "f16")
    assert r.code == 0, r.err
    reader = gguf.GGUFReader(gg)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["llama.block_count"] == cfg["num_hidden_layers"]
    assert fields["llama.attention.head_count"] == cfg["num_attention_heads"]
    assert fields["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert fields["llama.feed_forward_length"] == cfg["intermediate_size"]
    blocks = {t.name.split(".")[1] for t in reader.tensors if t.name.startswith("blk.")}
    assert blocks == {str(i) for i in range(cfg["num_hidden_layers"])}
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert list(q.shape) == [cfg["hidden_size"], cfg["num_attention_heads"] * fields["llama.rope.dimension_count"]]
    for m in (out, gg):
        r = llmtune("infer", "--model", m, "--prompt", "the cat", "--raw", "--max-new-tokens", "4", "--json")
        assert r.code == 0, r.err
        assert len(json.loads(r.out)["token_ids"]) == 4


def test_qwen2_layer_types_follow_the_kept_layers(llmtune, tmp_path):
    src = tmp_path / "qwen2-sliding"
    shutil.copytree(MODELS / "qwen2", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(layer_types=["full_attention", "sliding_attention"], sliding_window=8, use_sliding_window=True,
               max_window_layers=1)
    (src / "config.json").write_text(json.dumps(cfg))
    r = llmtune("prune", "--model", src, "--output", tmp_path / "o", "--method", "layers", "--drop-layers", "0")
    assert r.code == 0, r.err
    out = json.loads((tmp_path / "o" / "config.json").read_text())
    assert out["num_hidden_layers"] == 1 and out["layer_types"] == ["sliding_attention"] and out["max_window_layers"] == 0


def test_layer_pruned_model_recovers_with_a_short_finetune(llmtune, tmp_path, calib):
    out = tmp_path / "short"
    r = llmtune("prune", *structured_args("layers"), "--output", out, "--calibration", calib, "--calibration-samples", "4",
                "--seq-len", "32")
    assert r.code == 0, r.err
    command = next(l.strip() for l in r.out.splitlines() if l.strip().startswith("llmtune finetune"))
    assert f"--model {out}" in command and "method=lora" in command
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": l}) + "\n" for l in calib.read_text().splitlines()))
    run = tmp_path / "recovered"
    r = llmtune("finetune", "--model", out, "--data", data, "--output", run, "--max-steps", "12", "train.lr=5e-3",
                "method=lora", timeout=300)
    assert r.code == 0, r.err
    losses = [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(l)]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses

    # The end of the chain: the recovery adapter merged into the pruned model, as PEFT merges it, and
    # exported to GGUF for llama.cpp.
    import peft
    import transformers as tf
    from safetensors.torch import load_file
    merged, gg = tmp_path / "merged", tmp_path / "merged.gguf"
    r = llmtune("merge", "--adapter", run / "adapter", "--model", out, "--output", merged, "--dtype", "fp32",
                "--gguf", gg, "--gguf-type", "f16")
    assert r.code == 0, r.err
    base = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ref = peft.PeftModel.from_pretrained(base, run / "adapter").merge_and_unload().state_dict()
    ours = {}
    for f in merged.glob("*.safetensors"):
        ours.update(load_file(f))
    for name, t in ours.items():
        assert torch.allclose(t, ref[name], rtol=1e-5, atol=1e-6), name
    assert set(ours) <= set(ref) and any("q_proj" in n for n in ours)
    pruned = load_file(next(out.glob("*.safetensors")))
    assert any(not torch.equal(t, pruned[n]) for n, t in ours.items() if "_proj" in n)  # the adapter did something
    r = llmtune("infer", "--model", gg, "--prompt", "the cat", "--raw", "--max-new-tokens", "4", "--json")
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["token_ids"]) == 4


@pytest.mark.parametrize("extra, message", [
    (["--method", "layers", "--remove-layers", "2", "--calibration", "CALIB"], "leaves none"),
    (["--method", "layers", "--drop-layers", "0-1"], "leaves none"),
    (["--method", "layers", "--drop-layers", "2"], "out of range"),
    (["--method", "layers", "--drop-layers", "1-0"], "backwards"),
    (["--method", "layers"], "--remove-layers K"),
    (["--method", "layers", "--remove-layers", "1"], "calibration: required"),
    (["--method", "layers", "--remove-layers", "1", "--drop-layers", "0", "--calibration", "CALIB"], "exactly one"),
    (["--method", "width", "--num-attention-heads", "3", "--calibration", "CALIB"], "GQA"),
    (["--method", "width", "--num-attention-heads", "8", "--calibration", "CALIB"], "more than the model has"),
    (["--method", "width", "--num-key-value-heads", "3", "--calibration", "CALIB"], "more than the model has"),
    (["--method", "width", "--intermediate-size", "4096", "--calibration", "CALIB"], "MLP channels"),
    (["--method", "width", "--calibration", "CALIB"], "the new counts"),
    (["--method", "wanda", "--calibration", "CALIB", "--remove-layers", "1"], "remove_layers: applies to --method layers"),
    (["--method", "magnitude", "--intermediate-size", "64"], "intermediate_size: applies to --method width"),
    (["--method", "layers", "--drop-layers", "0", "--sparsity", "0.5"], "sparsity: applies to magnitude"),
    (["--method", "width", "--num-attention-heads", "2", "--pattern", "2:4"], "pattern: applies to magnitude"),
    (["--method", "layers", "--drop-layers", "0", "--num-attention-heads", "2"], "applies to --method width"),
    (["--method", "wanda", "--calibration", "CALIB", "damp=0.1"], "damp: applies to --method sparsegpt"),
])
def test_structured_bad_input_one_line_exit_2_nothing_written(llmtune, tmp_path, calib, extra, message):
    extra = [calib if a == "CALIB" else a for a in extra]
    r = llmtune("prune", "--model", MODELS / "llama3", "--output", tmp_path / "out", *extra)
    assert r.code == 2, (r.code, r.err)
    assert len(errors(r)) == 1 and message in errors(r)[0], r.err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("out")]


ROOT = Path(__file__).resolve().parents[2]


def demo_copy(dst, scale=None, channels=4):
    """The bundled demo model in fp32. With `scale`, `channels` hidden channels (seeded) become outlier
    features by a reparametrization that leaves the function unchanged: each decoder layer's two
    RMSNorm weights are multiplied by `scale` at those channels and the columns of the linears that
    read them (q/k/v, gate/up) divided by it. Large language models carry such channels (LLM.int8(),
    Wanda's motivation); a 0.9M-parameter model trained for minutes does not."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(ROOT / "demo" / "model", dst)
    tensors = {k: v.float() for k, v in load_file(dst / "model.safetensors").items()}
    if scale is not None:
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(tensors["model.embed_tokens.weight"].shape[1], generator=g)[:channels]
        for name in list(tensors):
            if name.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")):
                tensors[name][idx] *= scale
            elif name.endswith(tuple(f"{n}.weight" for n in ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"])):
                tensors[name][:, idx] /= scale
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def demo_prune(llmtune, model, out, method, *extra):
    r = llmtune("prune", ROOT / "configs" / "demo-prune.yaml", f"model={model}", f"output={out}", f"method={method}",
                *extra, "--json", cwd=ROOT, timeout=600)
    assert r.code == 0, r.err
    return json.loads(r.out)["eval"]


def test_demo_perplexity_follows_the_published_ordering(llmtune, tmp_path):
    """configs/demo-prune.yaml (held-out prose) at 50%: Wanda and SparseGPT below magnitude pruning as
    the Wanda paper's baseline prunes (the smallest |W| of the whole matrix, locuslab/wanda's
    prune_magnitude). Per-row magnitude nearly ties Wanda on the plain demo: its inputs have no outlier
    channels (max/median ‖X_j‖ 1.2-1.6 before q/k/v/gate/up), so |W_ij|·‖X_j‖ ranks almost as |W_ij|
    does. With outlier channels made by a function-preserving rescale, the published ordering holds
    per row too: Wanda's and SparseGPT's scores do not change, magnitude's do."""
    plain = demo_copy(tmp_path / "plain")
    base = {m: demo_prune(llmtune, plain, tmp_path / f"p-{m}", m) for m in ["wanda", "sparsegpt"]}
    base["magnitude-layer"] = demo_prune(llmtune, plain, tmp_path / "p-ml", "magnitude", "--scope", "layer")
    base["magnitude-row"] = demo_prune(llmtune, plain, tmp_path / "p-mr", "magnitude")
    ppl = {k: v["perplexity_after"] for k, v in base.items()}
    before = base["wanda"]["perplexity_before"]
    print("plain demo:", before, ppl)
    # SparseGPT (which also updates the weights it keeps) beats both magnitude variants; Wanda's masks
    # agree with per-row magnitude's on 95-97% of the q/k/v/gate/up weights here, and its perplexity
    # is within 1% of magnitude's (2.787 against 2.779 per row and 2.782 per layer when measured).
    assert before < ppl["sparsegpt"] < min(ppl["magnitude-layer"], ppl["magnitude-row"]), ppl
    assert ppl["wanda"] == pytest.approx(ppl["magnitude-row"], rel=0.01), ppl

    outliers = demo_copy(tmp_path / "outliers", scale=16.0)
    resc = {m: demo_prune(llmtune, outliers, tmp_path / f"o-{m}", m) for m in ["wanda", "sparsegpt", "magnitude"]}
    resc["magnitude-layer"] = demo_prune(llmtune, outliers, tmp_path / "o-ml", "magnitude", "--scope", "layer")
    print("with outlier channels:", {k: v["perplexity_after"] for k, v in resc.items()})
    # The same function (16 is a power of two: the rescale is exact in fp32), the same Wanda masks.
    assert resc["wanda"]["perplexity_before"] == pytest.approx(before, rel=1e-5)
    assert resc["wanda"]["perplexity_after"] == pytest.approx(ppl["wanda"], rel=1e-4)
    assert resc["sparsegpt"]["perplexity_after"] == pytest.approx(ppl["sparsegpt"], rel=1e-3)
    assert resc["magnitude"]["perplexity_after"] > ppl["magnitude-row"]
    for mag in ["magnitude", "magnitude-layer"]:
        assert resc["wanda"]["perplexity_after"] < resc[mag]["perplexity_after"], mag
        assert resc["sparsegpt"]["perplexity_after"] < resc[mag]["perplexity_after"], mag
