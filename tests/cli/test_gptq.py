"""`llmtune quantize --method gptq|rtn` on the bundled demo model: the GPTQ-format directory read back by
an independent numpy unpacker (qweight / qzeros / scales / g_idx as FORMATS.md §8.2 lays them out)
gives, in transformers, the loss llmtune reports for its quantized model; GPTQ beats round-to-nearest
at 4 bits g128 (the published ordering); bad input is one line and writes nothing."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT

DEMO = ROOT / "demo"
CALIB = DEMO / "data" / "pretrain.jsonl"
HELD_OUT = DEMO / "data" / "pretrain_val.jsonl"


def quantize(llmtune, out, *args):
    r = llmtune("quantize", "--model", DEMO / "model", "--output", out, *args, "--json", timeout=600)
    assert r.code == 0, r.err
    return json.loads(r.out)


def unpack(words, bits, axis):
    """int32 words → codes: the words along `axis` read as one little-endian bit stream (word 0's bit 0
    first), cut into `bits`-bit codes; a code may straddle two words (3 bits: 32 codes in 3 words)."""
    u = np.moveaxis(words.astype(np.uint32), axis, 0)                       # (words, rest)
    stream = (u[:, None, :] >> np.arange(32, dtype=np.uint32)[None, :, None]) & np.uint32(1)
    stream = stream.reshape(-1, u.shape[1]).astype(np.int64)                 # (words·32, rest), bit by bit
    codes = (stream.reshape(-1, bits, u.shape[1]) << np.arange(bits)[None, :, None]).sum(axis=1)
    return np.moveaxis(codes, 0, axis)


def w_in(tensors, module):
    return tensors[module + ".g_idx"].shape[0]


def dequantize(tensors, module, bits):
    q = unpack(tensors[module + ".qweight"], bits, 0)           # (in, out)
    z = unpack(tensors[module + ".qzeros"], bits, 1) + 1        # (groups, out); v1 stores z - 1
    s = tensors[module + ".scales"].astype(np.float32)          # (groups, out)
    g = tensors[module + ".g_idx"].astype(np.int64)             # (in,)
    return (s[g] * (q - z[g]).astype(np.float32)).T              # (out, in)


def transformers_loss(model_dir, weights):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, w in weights.items():
            model.get_submodule(name).weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        total, count = 0.0, 0
        for line in HELD_OUT.read_text().splitlines():
            ids = tok(json.loads(line)["text"], add_special_tokens=True, return_tensors="pt").input_ids[:, :512]
            logits = model(ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count


@pytest.mark.parametrize("sym,act_order,bits", [(True, False, 4), (False, True, 4), (True, False, 3), (False, True, 3)])
def test_gptq_directory_unpacks_to_the_model_llmtune_evaluated(llmtune, tmp_path, sym, act_order, bits):
    out = tmp_path / "gptq"
    flags = ["--sym" if sym else "--asym"] + (["--act-order"] if act_order else [])
    j = quantize(llmtune, out, "--method", "gptq", "--bits", bits, "--group-size", 64, *flags, "--calibration", CALIB,
                 "--calibration-samples", 32, "--seq-len", 128, "--eval-data", HELD_OUT)
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config == json.loads((out / "quantize_config.json").read_text())
    assert (config["quant_method"], config["bits"], config["group_size"], config["sym"], config["desc_act"],
            config["checkpoint_format"]) == ("gptq", bits, 64, sym, act_order, "gptq")
    # The packed tensors as numpy arrays (the kept ones are bf16, which numpy lacks).
    tensors = {k: v.numpy() for k, v in load_file(str(out / "model.safetensors")).items() if v.dtype != torch.bfloat16}
    modules = sorted({k.rsplit(".", 1)[0] for k in tensors if k.endswith(".qweight")})
    assert len(modules) == len(j["layers"]) and all("lm_head" not in m for m in modules)
    weights = {}
    for m in modules:
        assert tensors[m + ".qweight"].dtype == np.int32 and tensors[m + ".scales"].dtype == np.float16
        assert tensors[m + ".qweight"].shape[0] * 32 == w_in(tensors, m) * bits
        w = dequantize(tensors, m, bits)
        if sym:  # symmetric zero points are 2^(bits-1), stored minus one (4 bits: 7 in every nibble)
            assert (unpack(tensors[m + ".qzeros"], bits, 1) == (1 << (bits - 1)) - 1).all()
            if bits == 4:
                assert (tensors[m + ".qzeros"].astype(np.uint32) == 0x77777777).all()
        assert (tensors[m + ".g_idx"] == np.arange(w.shape[1]) // 64).all()
        weights[m] = w
    ours = j["quantized_loss"]
    theirs = transformers_loss(DEMO / "model", weights)
    assert abs(ours - theirs) <= 1e-4 * abs(theirs), (ours, theirs)
    assert j["quantized_perplexity"] > j["source_perplexity"]


def test_gptq_beats_round_to_nearest_on_the_demo(llmtune, tmp_path):
    common = ["--bits", 4, "--group-size", 128, "--eval-data", HELD_OUT]
    gptq = quantize(llmtune, tmp_path / "gptq", "--method", "gptq", "--calibration", CALIB, "--calibration-samples", 128,
                    "--seq-len", 256, *common)
    rtn = quantize(llmtune, tmp_path / "rtn", "--method", "rtn", *common)
    assert gptq["source_perplexity"] == rtn["source_perplexity"]
    assert gptq["source_perplexity"] < gptq["quantized_perplexity"] < rtn["quantized_perplexity"], (gptq, rtn)
    # The gptq run reports the RTN baseline side by side: equal to the RTN run's own result.
    assert gptq["rtn_perplexity"] == pytest.approx(rtn["quantized_perplexity"], rel=1e-6), (gptq, rtn)
    assert "rtn_perplexity" not in rtn
    assert all(l["output_error"] >= 0 and l["damp"] == 0.01 for l in gptq["layers"])


@pytest.mark.parametrize("args,needle", [
    (["--method", "gptq", "--bits", 5, "--calibration", CALIB], "bits"),
    (["--method", "gptq", "--bits", 6, "--calibration", CALIB], "bits: 6"),
    (["--method", "rtn", "--group-size", 100], "group_size: 100 does not divide"),
    (["--method", "gptq"], "calibration: required"),
    (["--method", "gptq", "--calibration", "SHORT", "--seq-len", 64], "short.txt"),
    (["--method", "rtn", "--calibration", CALIB], "no effect for --method rtn"),
    (["--method", "rtn", "--type", "q4_0"], "alternatives"),
    (["--type", "q8_0", "--bits", 4], "applies to --method"),
    (["--method", "rtn", "--act-order"], "act_order"),
    (["--method", "gptq", "--calibration", CALIB, "--sym", "--asym"], "alternatives"),
])
def test_bad_gptq_input_is_one_line_and_writes_nothing(llmtune, tmp_path, args, needle):
    out = tmp_path / "out"
    short = tmp_path / "short.txt"
    short.write_text("Too few words to calibrate on.")
    r = llmtune("quantize", "--model", DEMO / "model", "--output", out, *[short if a == "SHORT" else a for a in args])
    errors = [l for l in r.err_lines if l.startswith("llmtune: error:")]
    assert r.code != 0 and len(errors) == 1 and needle in errors[0], r.err
    assert not out.exists() and not list(tmp_path.glob("out*"))  # no output, no staging left


def eval_loss(llmtune, model, *extra):
    r = llmtune("eval", "--model", model, "--data", HELD_OUT, *extra, "--json", timeout=300)
    assert r.code == 0, r.err
    return json.loads(r.out)["loss"]


def test_gptq_directory_loads_back_for_eval_finetune_infer_and_merge(llmtune, tmp_path):
    out = tmp_path / "gptq"
    j = quantize(llmtune, out, "--method", "gptq", "--bits", 4, "--group-size", 128, "--calibration", CALIB,
                 "--calibration-samples", 32, "--seq-len", 128, "--eval-data", HELD_OUT)
    # eval reads the files back: the loss quantize computed in memory before writing them.
    assert abs(eval_loss(llmtune, out) - j["quantized_loss"]) <= 1e-6 * j["quantized_loss"]

    # The zero-point convention is read off the values: the same zeros stored as v2 (z, not z - 1), labelled
    # gptq_v2 or mislabelled gptq, load to the same model.
    v2 = tmp_path / "v2"
    v2.mkdir()
    for f in out.iterdir():
        if f.name != "model.safetensors":
            (v2 / f.name).write_bytes(f.read_bytes())
    from safetensors.torch import save_file
    tensors = load_file(str(out / "model.safetensors"))
    for k in [k for k in tensors if k.endswith(".qzeros")]:
        tensors[k] = torch.full_like(tensors[k], 0x88888888 - (1 << 32))
    save_file(tensors, str(v2 / "model.safetensors"), metadata={"format": "pt"})
    assert abs(eval_loss(llmtune, v2) - j["quantized_loss"]) <= 1e-6 * j["quantized_loss"]

    # LoRA over the frozen GPTQ base, then merged into a 16-bit model.
    ft = tmp_path / "ft"
    r = llmtune("finetune", "--model", out, "--data", DEMO / "data" / "train.jsonl", "--output", ft, "--max-steps", 8,
                "lora.r=8", "train.lr=2e-3", "--json", timeout=300)
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["quantization"]["type"] == "gptq" and summary["quantization"]["quantized_linears"] == len(j["layers"])
    with_adapter = eval_loss(llmtune, out, "--adapter", ft / "adapter")
    assert with_adapter != j["quantized_loss"]
    merged = tmp_path / "merged"
    r = llmtune("merge", "--model", out, "--adapter", ft / "adapter", "--output", merged, timeout=300)
    assert r.code == 0, r.err
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    # The merged weights are rounded to float16 once (the base's dtype): the loss moves by that rounding only.
    assert abs(eval_loss(llmtune, merged) - with_adapter) <= 2e-3 * with_adapter
    r = llmtune("infer", "--model", out, "--adapter", ft / "adapter", "--prompt", "Nine times eight", "--max-new-tokens", 5)
    assert r.code == 0 and r.out.strip(), r.err


def test_full_finetune_and_qlora_over_a_gptq_base_are_refused(llmtune, tmp_path):
    out = tmp_path / "rtn"
    quantize(llmtune, out, "--method", "rtn")
    for extra, needle in ((["method=full"], "method full"), (["method=qlora"], "qlora"), (["model.quantize=nf4"], "model.quantize")):
        r = llmtune("finetune", "--model", out, "--data", DEMO / "data" / "train.jsonl", "--output", tmp_path / "ft", *extra)
        errors = [l for l in r.err_lines if l.startswith("llmtune: error:")]
        assert r.code != 0 and len(errors) == 1 and needle in errors[0], r.err
        assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("damage,needle", [
    ("bits5", "bits 5 is not loaded"),
    ("format", "checkpoint_format"),
    ("qweight_shape", ".qweight' is"),
    ("scales_dtype", ".scales' is"),
])
def test_damaged_gptq_checkpoints_are_one_line_errors(llmtune, tmp_path, damage, needle):
    from safetensors.torch import save_file
    out = tmp_path / "rtn"
    quantize(llmtune, out, "--method", "rtn", "--group-size", 64)
    config = json.loads((out / "config.json").read_text())
    tensors = load_file(str(out / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj"
    if damage == "bits5":
        config["quantization_config"]["bits"] = 5
    elif damage == "format":
        config["quantization_config"]["checkpoint_format"] = "marlin"
    elif damage == "qweight_shape":
        tensors[key + ".qweight"] = tensors[key + ".qweight"][:-1].clone()
    else:
        tensors[key + ".scales"] = tensors[key + ".scales"].float()
    (out / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for args in (["eval", "--model", out, "--data", HELD_OUT], ["infer", "--model", out, "--prompt", "Hi", "--max-new-tokens", 2]):
        r = llmtune(*args)
        errors = [l for l in r.err_lines if l.startswith("llmtune: error:")]
        assert r.code != 0 and len(errors) == 1 and needle in errors[0], r.err
