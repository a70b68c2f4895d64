"""`llmtune quantize --type nf4|fp4|int8` and `llmtune merge` from a bitsandbytes base, end to end
against transformers + bitsandbytes + PEFT on CPU: the directory we write holds the tensors, dtypes,
quant states and config.json that transformers' own save_pretrained writes for the same model, it
loads in transformers with the logits of transformers' own quantization, and `llmtune eval` on it
equals transformers' loss; merging an adapter into a 4-bit/8-bit base equals PEFT over the
dequantized base; bad input is a one-line error with nothing written."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from test_merge import TARGETS, make_adapter

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
TYPES = {"nf4": ["--type", "nf4"], "nf4-dq": ["--type", "nf4", "--double-quant"], "fp4": ["--type", "fp4"],
         "int8": ["--type", "int8"]}
TEXT = "The quick brown fox jumps over the lazy dog, 42 times. " * 3


def bnb_config(kind, compute_dtype=torch.float32):
    import transformers as tf

    if kind == "int8":
        return tf.BitsAndBytesConfig(load_in_8bit=True)
    return tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind[:3], bnb_4bit_use_double_quant=kind.endswith("dq"),
                                 bnb_4bit_compute_dtype=compute_dtype)


def transformers_save(src, out, kind, dtype=torch.float32, max_shard_size=None):
    """What transformers + bitsandbytes write for `src` quantized as `kind`."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(src, quantization_config=bnb_config(kind, dtype), dtype=dtype,
                                                    device_map="cpu")
    model.save_pretrained(out, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return out


def tensors(directory):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def copy_tokenizer(src, dst):
    for f in Path(src).iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, Path(dst) / f.name)


def bf16_model(tmp_path, family="qwen2"):
    """A bf16 copy of a fixture (qwen2: q/k/v biases and tied embeddings)."""
    import transformers as tf

    out = tmp_path / f"{family}-bf16"
    tf.AutoModelForCausalLM.from_pretrained(MODELS / family, dtype=torch.bfloat16).save_pretrained(out)
    copy_tokenizer(MODELS / family, out)
    return out


def nibbles(packed):
    p = packed.reshape(-1).int()
    return torch.stack([p >> 4, p & 15], 1).reshape(-1)


def assert_same_checkpoint(ours_dir, ref_dir, kind):
    """Keys, dtypes, shapes, quant states and config.json as transformers wrote them; the packed
    codes, absmax, SCB and every unquantized tensor equal bitwise. Double quantization: the nested
    8-bit absmax codes come from bitsandbytes' native CPU kernel, which can pick the neighbouring code
    where a value sits on a bucket midpoint: ≤ 1 code apart, in ≤ 3% of the blocks."""
    ours, ref = tensors(ours_dir), tensors(ref_dir)
    assert sorted(ours) == sorted(ref)
    for key, r in ref.items():
        o = ours[key]
        assert (o.dtype, o.shape) == (r.dtype, r.shape), key
        if ".quant_state." in key:
            assert json.loads(bytes(o.numpy())) == json.loads(bytes(r.numpy())), key
        elif kind.endswith("dq") and key.endswith(".weight.absmax"):
            diff = (o.int() - r.int()).abs()
            assert diff.max() <= 1 and (diff > 0).float().mean() <= 0.03, key
        else:
            assert torch.equal(o, r), key
    ours_cfg = json.loads((Path(ours_dir) / "config.json").read_text())
    ref_cfg = json.loads((Path(ref_dir) / "config.json").read_text())
    ours_cfg.pop("transformers_version", None), ref_cfg.pop("transformers_version", None)
    assert ours_cfg == ref_cfg


def load(model_dir, dequantize=False, **kw):
    """transformers' model on the CPU. bitsandbytes' Linear4bit switches, in eval mode on a CPU with
    AVX512-BF16, to a repacked bf16 kernel: turned off, so that 4-bit layers compute in float32
    (dequantize, then an fp32 matmul), as the fp32 comparisons below need. dequantize=True: the
    model with every quantized linear replaced by bitsandbytes' dequantized fp32 weight."""
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu", **kw)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model.dequantize() if dequantize else model


def logits(model_dir, ids, dequantize=False, **kw):
    model = load(model_dir, dequantize, **kw)
    with torch.no_grad():
        return model(ids).logits.float(), model(ids, labels=ids).loss.item()


@pytest.mark.parametrize("kind", list(TYPES))
def test_quantized_directory_is_what_transformers_writes_and_loads(llmtune, tmp_path, kind):
    src = MODELS / "llama3"
    out = tmp_path / "ours"
    r = llmtune("quantize", "--model", src, "--output", out, *TYPES[kind], "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["quantized_modules"] == 2 * len(TARGETS) and report["files"] == [str(out / "model.safetensors")]
    ref = transformers_save(src, tmp_path / "ref", kind.replace("-", ""))
    assert_same_checkpoint(out, ref, kind.replace("-", ""))
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (src / f).read_bytes(), f

    # transformers + bitsandbytes load it as their own, with the logits of their own quantization.
    import transformers as tf

    ids = tf.AutoTokenizer.from_pretrained(src)(TEXT, return_tensors="pt").input_ids
    ours, _ = logits(out, ids)
    theirs, _ = logits(ref, ids)
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= (1e-3 if kind.endswith("dq") else 0.0) * scale
    # ... within the quantization error of the source model's logits.
    source, _ = logits(src, ids, dtype=torch.float32)
    assert ((ours - source).norm() / source.norm()).item() < (0.1 if kind == "int8" else 0.7)

    # llmtune's own eval of the same file equals transformers' loss: 4-bit in fp32 compute (the
    # exact Linear4bit path = the model with bitsandbytes' dequantized weights); int8 with
    # Linear8bitLt's own LLM.int8 inference (fp16 activations, outliers ≥ 6 apart), which llmtune
    # reproduces.
    _, loss = logits(out, ids, dequantize=kind != "int8")
    data = tmp_path / "eval.txt"
    data.write_text(TEXT)
    r = llmtune("eval", "--model", out, "--data", data, "--max-seq-len", "256", "--dtype", "fp32", "--json")
    assert r.code == 0, r.err
    ev = json.loads(r.out)
    assert ev["tokens"] == ids.shape[1] - 1
    assert abs(ev["loss"] - loss) <= 1e-4 * abs(loss), (ev["loss"], loss)


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_bf16_model_with_biases_and_tied_embeddings_sharded(llmtune, tmp_path, kind):
    """A bf16 source keeps bf16 (embeddings, norms, biases), the quant states say bfloat16, and a
    small --shard-size gives transformers' index and shards (the index names every tensor)."""
    src = bf16_model(tmp_path)
    out = tmp_path / "ours"
    r = llmtune("quantize", "--model", src, "--output", out, *TYPES[kind], "--shard-size", "100KB", "--json")
    assert r.code == 0, r.err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (out / "model.safetensors").exists()
    ours = tensors(out)
    assert sorted(index["weight_map"]) == sorted(ours)
    ref = transformers_save(src, tmp_path / "ref", kind.replace("-", ""), dtype=torch.bfloat16, max_shard_size="100KB")
    assert_same_checkpoint(out, ref, kind.replace("-", ""))
    assert "lm_head.weight" not in ours and ours["model.embed_tokens.weight"].dtype == torch.bfloat16

    import transformers as tf

    ids = tf.AutoTokenizer.from_pretrained(src)(TEXT, return_tensors="pt").input_ids
    a, _ = logits(out, ids)
    b, _ = logits(ref, ids)
    assert (a - b).abs().max().item() <= 1e-2 * b.abs().max().item()


@pytest.mark.parametrize("quant_type,blocksize", [("nf4", 64), ("fp4", 64), ("nf4", 128), ("fp4", 32)])
def test_packed_bytes_equal_bitsandbytes_quantize_4bit(llmtune, tmp_path, quant_type, blocksize):
    """Every linear's packed codes and absmax equal bitsandbytes.functional.quantize_4bit of the
    source weight, at the default and other block sizes (the quant state records the block size)."""
    import bitsandbytes.functional as F

    src = MODELS / "llama3"
    out = tmp_path / "ours"
    r = llmtune("quantize", "--model", src, "--output", out, "--type", quant_type, "--blocksize", str(blocksize))
    assert r.code == 0, r.err
    ours, source = tensors(out), tensors(src)
    for layer in range(2):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"):
            key = f"model.layers.{layer}.{name}.weight"
            packed, state = F.quantize_4bit(source[key], blocksize=blocksize, quant_type=quant_type)
            assert torch.equal(ours[key], packed), key
            assert torch.equal(ours[key + ".absmax"], state.absmax), key
            qs = json.loads(bytes(ours[f"{key}.quant_state.bitsandbytes__{quant_type}"].numpy()))
            assert qs["blocksize"] == blocksize and qs["shape"] == list(source[key].shape)


def test_adapter_is_merged_before_quantizing_and_eval_data_reports_the_cost(llmtune, tmp_path):
    """--adapter: the packed codes equal bitsandbytes' quantization of PEFT's merge_and_unload (a
    code may flip where the fp32 merge differs by an ulp at a bucket midpoint: ≤ 0.1%). --eval-data:
    the quantized perplexity is `llmtune eval` of the written directory."""
    import bitsandbytes.functional as F
    import peft
    import transformers as tf

    src = MODELS / "llama3"
    adapter = make_adapter(src, tmp_path / "adapter", seed=5)
    data = tmp_path / "eval.txt"
    data.write_text(TEXT * 4)
    out = tmp_path / "ours"
    r = llmtune("quantize", "--model", src, "--adapter", adapter, "--output", out, "--type", "nf4", "--eval-data", data,
                "--max-seq-len", "64", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    merged = peft.PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32),
                                            adapter).merge_and_unload().state_dict()
    ours = tensors(out)
    flipped = total = 0
    for key, t in ours.items():
        if key.endswith("_proj.weight"):
            packed, _ = F.quantize_4bit(merged[key], quant_type="nf4")
            flipped += (nibbles(t) != nibbles(packed)).sum().item()
            total += packed.numel() * 2
    assert flipped <= 1e-3 * total, (flipped, total)

    r = llmtune("eval", "--model", out, "--data", data, "--max-seq-len", "64", "--json")
    assert r.code == 0, r.err
    assert report["quantized_perplexity"] == pytest.approx(json.loads(r.out)["perplexity"], rel=1e-6)
    r = llmtune("eval", "--model", src, "--adapter", adapter, "--data", data, "--max-seq-len", "64", "--json")
    assert report["source_perplexity"] == pytest.approx(json.loads(r.out)["perplexity"], rel=1e-6)


def test_quantizing_streams_layer_by_layer(llmtune, tmp_path):
    """Peak memory stays near the GGUF path's (which streams one tensor at a time), not the 16-bit
    model's size: a 0.4 GB fp32 model costs less than a quarter of its size on top of that."""
    import transformers as tf

    cfg = tf.LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=2048)
    torch.manual_seed(0)
    src = tmp_path / "big"
    tf.LlamaForCausalLM(cfg).save_pretrained(src, max_shard_size="100MB")
    copy_tokenizer(MODELS / "llama3", src)
    r = llmtune("quantize", "--model", src, "--output", tmp_path / "m.gguf", "--type", "q8_0", "--json", timeout=300)
    assert r.code == 0, r.err
    streaming = json.loads(r.out)["peak_rss_bytes"]
    for args in (["--type", "nf4", "--double-quant"], ["--type", "int8"]):
        out = tmp_path / "out"
        r = llmtune("quantize", "--model", src, "--output", out, *args, "--shard-size", "50MB", "--json", timeout=300)
        assert r.code == 0, r.err
        report = json.loads(r.out)
        assert report["peak_rss_bytes"] - streaming < 0.25 * report["source_bytes"], (args, report, streaming)
        shutil.rmtree(out)


def test_gguf_types_still_write_gguf(llmtune, tmp_path):
    r = llmtune("quantize", "--model", MODELS / "llama3", "--output", tmp_path / "m.gguf", "--type", "q8_0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["file_type"] == "Q8_0" and (tmp_path / "m.gguf").stat().st_size > 0


# ---- merge from a bitsandbytes base ----

def dequantized_peft_merge(bnb_dir, adapter, dtype):
    """PEFT's dequantize-and-merge: transformers dequantizes the bnb model, PEFT merges into it."""
    import peft
    import transformers as tf

    base = load(bnb_dir, dequantize=True, dtype=dtype)
    return peft.PeftModel.from_pretrained(base, adapter).merge_and_unload()


@pytest.mark.parametrize("kind,dtype", [("nf4dq", torch.float32), ("nf4", torch.bfloat16), ("int8", torch.float32)])
def test_merge_from_a_bnb_base_equals_peft_dequantize_and_merge(llmtune, tmp_path, kind, dtype):
    """Within bf16 rounding (one ulp: we add the delta to the float32 dequantized weight and round
    once; PEFT adds it to the weight dequantized in the model dtype); fp32: 1e-5 relative."""
    import transformers as tf

    src = MODELS / "llama3" if dtype == torch.float32 else bf16_model(tmp_path, "llama3")
    base = transformers_save(src, tmp_path / "base", kind, dtype=dtype)
    copy_tokenizer(src, base)
    adapter = make_adapter(src, tmp_path / "adapter", seed=9)
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["dequantized_modules"] == 2 * len(TARGETS) and report["base_quantization"].startswith(kind[:3])
    assert "dequantized" in r.err

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config.get("dtype", config.get("torch_dtype")) == str(dtype).removeprefix("torch.")
    ours = tensors(out)
    ref = dequantized_peft_merge(base, adapter, dtype).state_dict()
    assert sorted(ours) == sorted(ref)
    tol = 2 ** -7 if dtype == torch.bfloat16 else 1e-5
    for key, t in ref.items():
        assert ours[key].dtype == dtype, key
        assert torch.allclose(ours[key].float(), t.float(), rtol=tol, atol=tol * t.abs().max().item()), key
    # The merged directory loads in transformers as a plain 16-bit model.
    ids = tf.AutoTokenizer.from_pretrained(src)(TEXT, return_tensors="pt").input_ids
    model = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear"
    with torch.no_grad():
        a = model(ids).logits
        b = dequantized_peft_merge(base, adapter, dtype).float()(ids).logits
    assert (a - b).abs().max().item() <= (5e-2 if dtype == torch.bfloat16 else 1e-4) * b.abs().max().item()


def test_merge_requantize_and_gguf_from_a_4bit_base(llmtune, tmp_path):
    """--quantize nf4 (the base's own settings): PEFT's merge into Linear4bit re-quantizes the same
    merged weight, so the codes agree (≤ 0.1% flipped at midpoints); the output says it is not the
    training-time base. --gguf from a 4-bit base writes the dequantized merge."""
    import peft
    import transformers as tf

    src = MODELS / "llama3"
    base = transformers_save(src, tmp_path / "base", "nf4")
    copy_tokenizer(src, base)
    adapter = make_adapter(src, tmp_path / "adapter", seed=2)
    out = tmp_path / "merged-nf4"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--quantize", "nf4",
                "--gguf", tmp_path / "m.gguf", "--gguf-type", "f32", "--json")
    assert r.code == 0, r.err
    assert "NOT bit-equal" in r.err
    assert json.loads((out / "config.json").read_text())["quantization_config"]["bnb_4bit_quant_type"] == "nf4"
    pm = peft.PeftModel.from_pretrained(load(base), adapter)
    ref = pm.merge_and_unload()
    ours = tensors(out)
    flipped = total = 0
    for name, module in ref.named_modules():
        if name.endswith("_proj"):
            packed = ours[name + ".weight"]
            flipped += (nibbles(packed) != nibbles(module.weight.data)).sum().item()
            total += packed.numel() * 2
    assert flipped <= 1e-3 * total, (flipped, total)

    import gguf
    import numpy as np

    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
    merged = dequantized_peft_merge(base, adapter, torch.float32).state_dict()
    want = merged["model.layers.0.self_attn.v_proj.weight"].numpy()
    assert np.allclose(np.asarray(q.data).reshape(want.shape), want, rtol=1e-5, atol=1e-6)


# ---- bad input: one line, exit code, nothing written ----

def one_line_error(r, code, *needles):
    assert r.code == code, (r.code, r.err)
    errs = [l for l in r.err_lines if "error" in l]
    assert len(errs) == 1, r.err
    for n in needles:
        assert n in errs[0], errs[0]


@pytest.mark.parametrize("args,needles", [
    (["--type", "nf5"], ["type", "nf5"]),
    (["--type", "int8", "--double-quant"], ["double_quant", "int8"]),
    (["--type", "q4_0", "--double-quant"], ["double_quant", "q4_0"]),
    (["--type", "nf4", "--blocksize", "100"], ["blocksize", "100", "power of two"]),
    (["--type", "nf4", "--blocksize", "8192"], ["blocksize", "8192"]),
    (["--type", "int8", "--blocksize", "64"], ["blocksize", "int8"]),
    (["--type", "nf4", "--name", "x"], ["name", "GGUF"]),
    (["--type", "nf4", "--ollama"], ["ollama", "GGUF"]),
])
def test_bad_options_are_refused(llmtune, tmp_path, args, needles):
    out = tmp_path / "out"
    one_line_error(llmtune("quantize", "--model", MODELS / "llama3", "--output", out, *args), 2, *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_outputs_are_refused(llmtune, tmp_path):
    src = MODELS / "llama3"
    one_line_error(llmtune("quantize", "--model", src, "--output", tmp_path / "m.gguf", "--type", "nf4"), 2, ".gguf")
    one_line_error(llmtune("quantize", "--model", src, "--output", tmp_path / "m.gguf", "--type", "q8_0",
                           "--shard-size", "1GB"), 2, "shard_size")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(llmtune("quantize", "--model", src, "--output", out, "--type", "nf4"), 2, str(out), "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert llmtune("quantize", "--model", src, "--output", out, "--type", "nf4", "--force").code == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left behind


def test_adapter_that_does_not_fit_is_refused_before_writing(llmtune, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(MODELS / "llama3", tmp_path / "adapter", seed=1)
    weights = adapter / "adapter_model.safetensors"
    t = load_file(weights)
    key = next(k for k in t if "layers.1.mlp.down_proj.lora_A" in k)
    t[key] = torch.zeros(t[key].shape[0], t[key].shape[1] + 8)  # in_features 136 against the base's 128
    save_file(t, weights, metadata={"format": "pt"})
    out = tmp_path / "out"
    r = llmtune("quantize", "--model", MODELS / "llama3", "--adapter", adapter, "--output", out, "--type", "nf4")
    assert r.code != 0 and len([l for l in r.err_lines if "error" in l]) == 1, r.err
    assert "adapter" in r.err and not out.exists()
    base = transformers_save(MODELS / "llama3", tmp_path / "base", "nf4")
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", out)
    assert r.code != 0 and len([l for l in r.err_lines if "error" in l]) == 1, r.err
    assert not out.exists()
    one_line_error(llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--double-quant"), 2,
                   "double_quant")
    one_line_error(llmtune("merge", "--model", base, "--adapter", adapter, "--output", out, "--quantize", "int8",
                           "--blocksize", "64"), 2, "blocksize")
    assert not out.exists()
