"""`llmtune quantize --format compressed-tensors` on the bundled demo model: the directory is the `pack-quantized`
layout llm-compressor writes and vLLM serves. Its tensors are named, typed and shaped as the compressed-tensors
package itself writes them for each linear; an independent unpacker reads them to the weights transformers
decompresses; transformers gives the loss llmtune reported for its quantized model; `llmtune eval` reads the
directory back to that same loss.

The layout (compressed-tensors 0.20), per quantized linear of shape (out, in), groups of G along `in`:
  weight_packed      int32 (out, in·bits/32): code u = q + 2^(bits-1), 32/bits codes per word along `in`,
                     lowest bits first (q the signed value in [-2^(bits-1), 2^(bits-1) - 1])
  weight_scale       the model's dtype (out, in/G)
  weight_zero_point  asymmetric only: int32 (ceil(out·bits/32), in/G), the signed zero points offset the same way
                     and packed the same way but along `out`; absent when symmetric (zero point 2^(bits-1))
  weight_shape       int64 [out, in]
  W = s·(u − z), computed by the package in the scale's dtype."""
import functools
import json

import pytest
import torch
from safetensors.torch import load_file

from test_gptq import CALIB, DEMO, HELD_OUT, eval_loss, quantize, transformers_loss, unpack

BITS, GROUP = 4, 64
MODEL_DTYPE = getattr(torch, json.loads((DEMO / "model" / "config.json").read_text())["dtype"])


def scheme(sym, bits=BITS, group=GROUP):
    return {"targets": ["Linear"], "weights": {"num_bits": bits, "type": "int", "symmetric": sym, "strategy": "group",
                                               "group_size": group, "dynamic": False}}


@functools.lru_cache(maxsize=None)
def package_layout(out_features, in_features, dtype, sym, bits=BITS):
    """{tensor suffix: (dtype, shape)} compressed-tensors itself writes for one nn.Linear of this shape and dtype."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features, bias=False, dtype=dtype))
    config = QuantizationConfig.model_validate({"config_groups": {"group_0": scheme(sym, bits)}, "quantization_status": "frozen"})
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        model[0].weight_scale.fill_(1.0)  # allocated empty
    ModelCompressor.from_pretrained_model(model).compress_model(model)
    return {k.split(".", 1)[1]: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()}


def dequantize(tensors, module, bits=BITS):
    """fp32 s·(u − z), read with the numpy unpacker of test_gptq, not with the package."""
    out_features, in_features = tensors[module + ".weight_shape"].tolist()
    s = tensors[module + ".weight_scale"].float()
    u = torch.from_numpy(unpack(tensors[module + ".weight_packed"].numpy(), bits, 1)[:, :in_features])
    zp = tensors.get(module + ".weight_zero_point")
    z = torch.full(s.shape, 1 << (bits - 1)) if zp is None else torch.from_numpy(unpack(zp.numpy(), bits, 0)[:out_features])
    g = in_features // s.shape[1]
    return s.repeat_interleave(g, 1) * (u - z.repeat_interleave(g, 1)).float()


def held_out_loss(model, tok):
    """Token-weighted loss on HELD_OUT, as test_gptq.transformers_loss computes it."""
    total, count = 0.0, 0
    with torch.no_grad():
        for line in HELD_OUT.read_text().splitlines():
            ids = tok(json.loads(line)["text"], add_special_tokens=True, return_tensors="pt").input_ids[:, :512]
            logits = model(ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count


def check_directory(out, sym, bits=BITS):
    """Asserts the directory is a pack-quantized one transformers loads; returns (quantized modules, exact fp32
    weights, the loss of the model transformers loads)."""
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, CompressedTensorsConfig
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"], config["quantization_status"]) == \
        ("compressed-tensors", "pack-quantized", "compressed"), config
    assert "lm_head" in config["ignore"] and config.get("kv_cache_scheme") is None, config
    parsed = QuantizationConfig.model_validate(config)
    (group,) = parsed.config_groups.values()
    w = group.weights
    assert "Linear" in group.targets and group.input_activations is None and group.output_activations is None
    assert (w.num_bits, w.type, w.strategy, w.group_size, w.symmetric, w.dynamic, w.actorder) == \
        (bits, "int", "group", GROUP, sym, False, None), w
    assert group.format in (None, "pack-quantized")

    tensors = load_file(str(out / "model.safetensors"))
    modules = sorted(k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed"))
    assert modules and all("lm_head" not in m for m in modules)
    for m in modules:
        layout = {k[len(m) + 1:]: (v.dtype, tuple(v.shape)) for k, v in tensors.items() if k.startswith(m + ".")}
        assert layout == package_layout(*tensors[m + ".weight_shape"].tolist(), MODEL_DTYPE, sym, bits), (m, layout)
        assert (m + ".weight_zero_point" in tensors) == (not sym)
    weights = {m: dequantize(tensors, m, bits) for m in modules}

    # Decompressed on CPU at load time (dequantize=True, formerly run_compressed=False; the default leaves them
    # compressed and fails on asymmetric zero points in transformers 5.24 / compressed-tensors 0.20.1).
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True)).eval()
    for m in modules:  # the package computes s·(u − z) in the scale's dtype, then casts it to the model's
        expected = weights[m].to(tensors[m + ".weight_scale"].dtype).float()
        assert torch.equal(model.get_submodule(m).weight.detach(), expected), m
    return modules, weights, held_out_loss(model, AutoTokenizer.from_pretrained(str(out)))


@pytest.mark.parametrize("sym,bits", [(True, BITS), (False, BITS), (True, 3), (False, 3)])
def test_compressed_tensors_directory_loads_in_transformers_to_the_model_llmtune_evaluated(llmtune, tmp_path, sym, bits):
    out = tmp_path / "ct"
    j = quantize(llmtune, out, "--method", "gptq", "--format", "compressed-tensors", "--bits", bits,
                 "--group-size", GROUP, "--sym" if sym else "--asym", "--calibration", CALIB,
                 "--calibration-samples", 16, "--seq-len", 128, "--eval-data", HELD_OUT)
    assert not (out / "quantize_config.json").exists()  # that file marks a GPTQ directory
    modules, _, theirs = check_directory(out, sym, bits)
    assert len(modules) == len(j["layers"])
    ours = j["quantized_loss"]
    assert abs(ours - theirs) <= 1e-4 * abs(theirs), (ours, theirs)
    assert j["quantized_perplexity"] > j["source_perplexity"]
    # eval reads the files back: the loss quantize computed in memory before writing them.
    assert abs(eval_loss(llmtune, out) - ours) <= 1e-6 * ours


def write_with_the_package(out, sym, bits=BITS):
    """The demo model round-to-nearest quantized and saved by compressed-tensors itself (min/max scales)."""
    import shutil
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(DEMO / "model"), dtype=MODEL_DTYPE)
    config = QuantizationConfig.model_validate({"config_groups": {"group_0": scheme(sym, bits)}, "ignore": ["lm_head"],
                                                "quantization_status": "frozen"})
    apply_quantization_config(model, config, show_progress=False)
    for m in model.modules():
        if hasattr(m, "weight_scale"):
            g = m.weight.detach().unflatten(-1, (-1, GROUP))
            s, z = calculate_qparams(g.amin(-1), g.amax(-1), m.quantization_scheme.weights)
            with torch.no_grad():
                m.weight_scale.copy_(s)
                if hasattr(m, "weight_zero_point"):
                    m.weight_zero_point.copy_(z)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(str(out))
    compressor.update_config(str(out))
    for f in (DEMO / "model").glob("*token*"):
        shutil.copy(f, out / f.name)


@pytest.mark.parametrize("sym,bits", [(True, BITS), (False, BITS), (True, 3), (False, 3)])
def test_the_checks_pass_on_a_directory_the_package_writes(llmtune, tmp_path, sym, bits):
    """The oracle checked against the package's own output; then llmtune reads that directory."""
    out = tmp_path / "ref"
    write_with_the_package(out, sym, bits)
    _, weights, theirs = check_directory(out, sym, bits)
    # The package's bf16 products move the loss by ~1e-5 from the exact fp32 s·(u − z).
    exact = transformers_loss(DEMO / "model", {m: w.numpy() for m, w in weights.items()})
    assert abs(exact - theirs) <= 1e-4 * exact, (exact, theirs)
    # llmtune dequantizes the package's files to the exact fp32 weights.
    ours = eval_loss(llmtune, out)
    assert abs(ours - exact) <= 1e-5 * exact, (ours, exact)


def test_compressed_tensors_base_trains_a_lora_and_merges(llmtune, tmp_path):
    out = tmp_path / "ct"
    quantize(llmtune, out, "--method", "rtn", "--format", "compressed-tensors", "--bits", BITS, "--group-size", GROUP, "--asym")
    ft = tmp_path / "ft"
    r = llmtune("finetune", "--model", out, "--data", DEMO / "data" / "train.jsonl", "--output", ft, "--max-steps", 4,
                "lora.r=8", "train.lr=2e-3", "--json", timeout=300)
    assert r.code == 0, r.err
    q = json.loads(r.out)["quantization"]
    assert q["type"] == "compressed-tensors" and q["source"] == "compressed-tensors checkpoint" and q["bits"] == BITS, q
    with_adapter = eval_loss(llmtune, out, "--adapter", ft / "adapter")
    merged = tmp_path / "merged"
    r = llmtune("merge", "--model", out, "--adapter", ft / "adapter", "--output", merged, timeout=300)
    assert r.code == 0, r.err
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    assert abs(eval_loss(llmtune, merged) - with_adapter) <= 2e-3 * with_adapter
