"""`llmtune eval` / `infer` on bitsandbytes 4-bit and 8-bit models, end to end against transformers +
bitsandbytes on CPU (fp32 compute): directories transformers saved with BitsAndBytesConfig, and
16-bit directories quantized while they load (`--quantize nf4|fp4|int8`); bad input is one line.

Which transformers forward is the reference: 8-bit, eval mode without grad (Linear8bitLt's LLM.int8
product, what our no-grad forward computes). 4-bit, the forward with gradients on (Linear4bit's
dequantize-then-multiply): bitsandbytes' no-grad CPU kernel (gemm_4bit) gives other numbers, up to
0.4 apart in these logits from its own dequantized weight."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
SRC = MODELS / "qwen2"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2\n", "Grüße aus München!"]


def bnb_config(kind):
    import transformers as tf

    if kind == "int8":
        return tf.BitsAndBytesConfig(load_in_8bit=True)
    return tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind[:3], bnb_4bit_use_double_quant=kind.endswith("dq"),
                                 bnb_4bit_compute_dtype=torch.float32)


def hf_quantized(kind, src=SRC):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(src, quantization_config=bnb_config(kind), dtype=torch.float32,
                                                   device_map="cpu")


def hf_saved(tmp_path_factory, kind):
    """A directory transformers + bitsandbytes saved, with the fixture's tokenizer."""
    out = tmp_path_factory.mktemp(f"bnb-{kind}")
    hf_quantized(kind).save_pretrained(out)
    for f in SRC.iterdir():
        if f.name.startswith("tokenizer") or f.suffix == ".jinja" or f.name == "generation_config.json":
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = hf_saved(tmp_path_factory, kind)
        return cache[kind]

    return get


def reference_logits(model, kind, ids):
    """Logits of a transformers bnb model in the mode llmtune's forward equals (module docstring)."""
    if kind == "int8":
        model.eval()
        with torch.no_grad():
            return model(ids).logits
    model.train()
    return model(ids).logits.detach()  # embeddings require grad: Linear4bit's dequantize path


def reference_loss(model, kind, rows):
    total, count = 0.0, 0
    for ids in rows:
        t = torch.tensor([ids])
        logits = reference_logits(model, kind, t)[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, t[0, 1:], reduction="sum").item()
        count += len(ids) - 1
    return total / count, count


def token_rows():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SRC)
    return [tok(t)["input_ids"][:24] for t in TEXTS]


def run_eval(llmtune, tmp_path, model, *extra):
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    r = llmtune("eval", "--model", model, "--data", data, "--max-seq-len", 24, "--batch-size", 1, "--dtype", "fp32",
                "--device", "cpu", "--json", *extra)
    assert r.code == 0, r.err
    return json.loads(r.out), r


@pytest.mark.parametrize("kind", ["nf4", "nf4-dq", "fp4", "int8"])
def test_eval_on_a_saved_bnb_directory_equals_transformers(llmtune, tmp_path, saved, kind):
    import transformers as tf

    directory = saved(kind)
    ours, r = run_eval(llmtune, tmp_path, directory)
    assert "bitsandbytes" in r.err and "linears quantized" in r.err
    model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, device_map="cpu")
    want, count = reference_loss(model, kind, token_rows())
    assert ours["tokens"] == count
    assert abs(ours["loss"] - want) <= 1e-4 * abs(want)


def test_eval_applies_the_saved_compute_dtype_as_transformers_does(llmtune, tmp_path):
    """bnb_4bit_compute_dtype: Linear4bit casts its input to it, multiplies in it (bias included) and
    casts back, so a checkpoint saved with bf16 compute evaluates differently from the same codes with
    fp32 compute. (An fp16 compute dtype moves this loss by ~1e-5, too little to tell apart here; a
    bf16 model is not a usable reference: transformers loads this checkpoint in fp32 whatever dtype
    it is asked for.)"""
    import transformers as tf

    compute, model_dtype = "bf16", "fp32"
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    config = tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype[compute])
    directory = tmp_path / f"nf4-{compute}"
    tf.AutoModelForCausalLM.from_pretrained(SRC, quantization_config=config, dtype=torch.float32,
                                            device_map="cpu").save_pretrained(directory)
    for f in SRC.iterdir():
        if f.name.startswith("tokenizer"):
            shutil.copy(f, directory / f.name)
    assert json.loads((directory / "config.json").read_text())["quantization_config"]["bnb_4bit_compute_dtype"] == \
        str(torch_dtype[compute]).removeprefix("torch.")
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    r = llmtune("eval", "--model", directory, "--data", data, "--max-seq-len", 24, "--batch-size", 1, "--dtype", model_dtype,
                "--device", "cpu", "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)["loss"]

    def loss_with(compute_dtype):
        model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype[model_dtype], device_map="cpu")
        for m in model.modules():
            if hasattr(m, "compute_dtype") and hasattr(m.weight, "quant_state"):
                m.compute_dtype = compute_dtype
        return reference_loss(model, "nf4", token_rows())[0]

    want = loss_with(torch_dtype[compute])
    other = loss_with(torch_dtype[model_dtype])  # the product in the model's dtype, as before this was applied
    assert abs(want - other) > 1e-4 * abs(want), "the compute dtype must matter for this test to mean anything"
    assert abs(ours - want) <= 0.1 * abs(want - other), (ours, want, other)


@pytest.mark.parametrize("kind", ["nf4", "fp4", "int8"])
def test_eval_quantize_flag_equals_transformers_quantizing_on_load(llmtune, tmp_path, kind):
    ours, r = run_eval(llmtune, tmp_path, SRC, "--quantize", kind)
    assert "quantized to" in r.err
    want, count = reference_loss(hf_quantized(kind), kind, token_rows())
    assert ours["tokens"] == count
    assert abs(ours["loss"] - want) <= 1e-4 * abs(want)


def bnb_flat_weight(w, kind, blocksize, double_quant):
    """w quantized by bitsandbytes' quantize_4bit (its codes and absmax), dequantized by flat blocks of
    `blocksize` elements: the layout its files hold and its CUDA kernels read. (Its CPU dequantizer
    takes blocks per row instead, which is wrong when a row is shorter than a block: 64-wide rows in
    blocks of 128 come back up to 1.5 off.) Double quant: the absmax minus its mean, quantized in
    blocks of 256 to the nearest value of bitsandbytes' signed dynamic map (its CPU kernel takes the
    neighbouring code for ~0.1% of values next to a midpoint; its PyTorch path, like llmtune, the
    nearest), plus the mean."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(w, blocksize=blocksize, quant_type=kind)
    b = packed.view(-1)
    values = F.get_4bit_type(kind, device="cpu")[torch.stack([(b >> 4).long(), (b & 15).long()], 1).reshape(-1)]
    absmax = state.absmax.float()
    if double_quant:
        offset = absmax.mean()
        x, dynamic = absmax - offset, F.create_dynamic_map(signed=True)
        nested = torch.empty_like(x)
        for i in range(0, len(x), 256):
            block = x[i:i + 256]
            scale = block.abs().max()
            nested[i:i + 256] = dynamic[(block.unsqueeze(1) / scale - dynamic).abs().argmin(1)] * scale
        absmax = nested + offset
    return (values[:w.numel()].reshape(-1, blocksize) * absmax.unsqueeze(1)).reshape(w.shape)


@pytest.mark.parametrize("kind, blocksize, double_quant",
                         [("nf4", 64, True), ("fp4", 64, True), ("nf4", 128, False), ("fp4", 256, True), ("nf4", 32, True)])
def test_eval_quantize_blocksize_and_double_quant_equal_bitsandbytes(llmtune, tmp_path, kind, blocksize, double_quant):
    """--blocksize and --double-quant on load, against the fp32 model whose decoder linears hold
    bitsandbytes' quantization of their weights (bnb_flat_weight; lm_head dense, as on load).
    transformers' BitsAndBytesConfig has no block size, and on CPU it dequantizes per row."""
    import transformers as tf

    dq = ["--double-quant"] if double_quant else []
    ours, r = run_eval(llmtune, tmp_path, SRC, "--quantize", kind, "--blocksize", blocksize, *dq)
    assert f"blocksize {blocksize}" in r.err and ("double quant" in r.err) == double_quant
    model = tf.AutoModelForCausalLM.from_pretrained(SRC, dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.copy_(bnb_flat_weight(module.weight.data, kind, blocksize, double_quant))
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in token_rows():
            t = torch.tensor([ids])
            total += torch.nn.functional.cross_entropy(model(t).logits[0, :-1], t[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    assert ours["tokens"] == count
    assert abs(ours["loss"] - total / count) <= 1e-5 * abs(total / count)
    # Each option takes effect: without it the loss is another one.
    plain, _ = run_eval(llmtune, tmp_path, SRC, "--quantize", kind)
    assert plain["loss"] != ours["loss"]


@pytest.mark.parametrize("command, extra, message", [
    ("eval", ["--quantize", "int8", "--double-quant"], "double_quant: applies to quantize nf4 or fp4, not int8"),
    ("eval", ["--blocksize", "128"], "blocksize: applies to quantize nf4 or fp4, not none"),
    ("infer", ["--quantize", "nf4", "--blocksize", "100"], "100 is not a power of two"),
    ("infer", ["--quantize", "fp4", "--blocksize", "8192"], "blocksize"),
    ("infer", ["--quantize", "int8", "blocksize=64"], "blocksize: applies to quantize nf4 or fp4, not int8"),
])
def test_four_bit_load_options_without_a_four_bit_type_are_refused(llmtune, tmp_path, command, extra, message):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"text": "x y z"}) + "\n")
    args = ["--data", data] if command == "eval" else ["--prompt", "x", "--raw"]
    line = one_line_error(llmtune(command, "--model", SRC, *args, *extra), 2)
    assert message in line, line


def greedy_reference(model, kind, ids, n):
    """Greedy continuation recomputing the whole sequence each step (no cache)."""
    ids = ids.clone()
    for _ in range(n):
        nxt = reference_logits(model, kind, ids)[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0].tolist()


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_infer_on_a_saved_bnb_directory_equals_transformers_greedy(llmtune, saved, kind):
    import transformers as tf

    directory = saved(kind)
    prompt = "The quick brown fox"
    r = llmtune("infer", "--model", directory, "--prompt", prompt, "--raw", "--max-new-tokens", 8, "--dtype", "fp32",
                "--device", "cpu", "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)
    tok = tf.AutoTokenizer.from_pretrained(directory)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, device_map="cpu")
    if kind == "int8":
        # LLM.int8 picks outlier columns over all tokens of a call: the same calls as ours (prompt,
        # then one token at a time with a cache) are generate()'s.
        with torch.no_grad():
            out = model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8)
        want = out[0, ids.shape[1]:].tolist()
    else:
        want = greedy_reference(model, kind, ids, 8)[ids.shape[1]:]
    assert ours["token_ids"][:len(want)] == want[:len(ours["token_ids"])]
    assert len(ours["token_ids"]) > 0


def test_infer_quantize_flag_runs(llmtune):
    r = llmtune("infer", "--model", SRC, "--prompt", "Hello", "--raw", "--max-new-tokens", 4, "--quantize", "int8",
                "--device", "cpu", "--json")
    assert r.code == 0, r.err
    assert "quantized to int8" in r.err
    assert json.loads(r.out)["token_ids"]


def one_line_error(r, code):
    assert r.code == code, (r.code, r.err)
    lines = [l for l in r.err_lines if "error" in l]
    assert len(lines) == 1, r.err
    return lines[0]


def test_quantize_flag_on_a_quantized_checkpoint_is_a_usage_error(llmtune, tmp_path, saved):
    line = one_line_error(llmtune("eval", "--model", saved("int8"), "--data", tmp_path / "x.jsonl", "--quantize", "nf4"), 2)
    assert "already a bitsandbytes 8-bit checkpoint" in line and "drop --quantize nf4" in line
    line = one_line_error(llmtune("infer", "--model", saved("nf4"), "--prompt", "x", "--quantize", "int8"), 2)
    assert "already a bitsandbytes 4-bit checkpoint" in line


def test_unknown_quantize_type_is_a_usage_error(llmtune):
    line = one_line_error(llmtune("infer", "--model", SRC, "--prompt", "x", "--quantize", "int4"), 2)
    assert "quantize" in line


@pytest.mark.parametrize("kind, tensor", [("nf4", "model.layers.0.self_attn.q_proj.weight.absmax"),
                                          ("int8", "model.layers.1.mlp.up_proj.SCB")])
def test_non_finite_quantization_state_is_named(llmtune, tmp_path, saved, kind, tensor):
    """A NaN absmax (or SCB) makes its layer's every output NaN: a warning naming the module, or with
    --refuse-non-finite a one-line error, as for a NaN weight."""
    from safetensors.torch import load_file, save_file

    d = tmp_path / "nan"
    shutil.copytree(saved(kind), d)
    t = load_file(d / "model.safetensors")
    t[tensor] = t[tensor].clone()
    t[tensor][1] = float("nan")
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    module = tensor.rsplit(".", 2)[0] if kind == "nf4" else tensor.rsplit(".", 1)[0]
    _, r = run_eval(llmtune, tmp_path, d)
    assert f"'{module} (quantized state)' (1 of" in r.err, r.err
    data = tmp_path / "eval.jsonl"
    line = one_line_error(llmtune("eval", "--model", d, "--data", data, "--refuse-non-finite"), 1)
    assert "hold NaN or infinite values" in line and module in line


def test_damaged_bnb_directories_are_one_line_errors(llmtune, tmp_path, saved):
    from safetensors.torch import load_file, save_file

    src = saved("nf4")
    module = "model.layers.0.self_attn.q_proj.weight"
    state = module + ".quant_state.bitsandbytes__nf4"

    def damaged(name, edit):
        d = tmp_path / name
        shutil.copytree(src, d)
        t = load_file(d / "model.safetensors")
        edit(t)
        save_file(t, d / "model.safetensors", metadata={"format": "pt"})
        return d

    def with_state(**changes):
        def edit(t):
            qs = json.loads(bytes(t[state].tolist()).decode())
            qs.update(changes)
            t[state] = torch.tensor(list(json.dumps(qs).encode()), dtype=torch.uint8)
        return edit

    cases = {
        "no_state": (lambda t: t.pop(state), "quant_state.bitsandbytes__nf4"),
        "blocksize": (with_state(blocksize=100), "blocksize 100"),
        "shape": (with_state(shape=[64, 16]), "packed bytes"),
        "quant_type": (with_state(quant_type="int4"), "unknown quant_type 'int4'"),
        "absmax": (lambda t: t.__setitem__(module + ".absmax", t[module + ".absmax"][:5].clone()), "absmax"),
    }
    for name, (edit, expect) in cases.items():
        d = damaged(name, edit)
        line = one_line_error(llmtune("infer", "--model", d, "--prompt", "x", "--device", "cpu"), 1)
        assert expect in line and str(d) in line, (name, line)
    # A quantization method we do not read yet.
    d = tmp_path / "awq"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    line = one_line_error(llmtune("eval", "--model", d, "--data", tmp_path / "x.jsonl"), 1)
    assert "'awq' is not supported yet" in line


@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_eval_with_an_adapter_over_a_bnb_directory_equals_peft(llmtune, tmp_path, saved, kind):
    """LoRA wraps the quantized linears: eval --adapter equals PEFT's LoRA over Linear4bit / Linear8bitLt."""
    import peft
    import transformers as tf
    from test_merge import make_adapter

    directory = saved(kind)
    adapter = make_adapter(SRC, tmp_path / "adapter", seed=5)
    ours, _ = run_eval(llmtune, tmp_path, directory, "--adapter", adapter)
    model = tf.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, device_map="cpu")
    pm = peft.PeftModel.from_pretrained(model, adapter)
    want, count = reference_loss(pm, kind, token_rows())
    assert ours["tokens"] == count
    assert abs(ours["loss"] - want) <= 1e-4 * abs(want)
