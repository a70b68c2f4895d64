"""bitsandbytes references for the C++ tests (called through tests/interop/reference.py): its 4-bit and
8-bit quantization, Linear4bit / Linear8bitLt, and transformers loading or saving a fixture with it."""
import json
import os
from pathlib import Path

import torch

FUNCTIONS = {}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _bnb():
    # bitsandbytes compiles its PyTorch kernels with torch.compile: seconds per call, the same numbers.
    import torch._dynamo
    torch._dynamo.config.disable = True
    import bitsandbytes.functional as F
    return F


def bnb_quantize_4bit(x, blocksize, quant_type, double_quant=False):
    """bitsandbytes.functional.quantize_4bit: packed bytes, absmax (uint8 codes when nested) and the
    dequantized weight; with double quant also the nested absmax, map and offset."""
    F = _bnb()
    packed, st = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)
    out = [packed, st.absmax, F.dequantize_4bit(packed, st)]
    if double_quant:
        out += [st.state2.absmax, st.state2.code, torch.tensor([float(st.offset)], dtype=torch.float32),
                F.dequantize_blockwise(st.absmax, st.state2) + st.offset]
    return out


def bnb_dequantize_4bit(packed, absmax, blocksize, quant_type, shape, dtype):
    F = _bnb()
    st = F.QuantState(absmax=absmax, shape=torch.Size(shape), code=F.get_4bit_type(quant_type, device="cpu"), blocksize=blocksize,
                      quant_type=quant_type, dtype=DTYPES[dtype])
    return [F.dequantize_4bit(packed, st)]


def bnb_dynamic_map():
    return [_bnb().create_dynamic_map(signed=True)]


def bnb_int8(w):
    """What bnb.nn.Int8Params stores (CB, SCB) and bitsandbytes' dequantization of it."""
    F = _bnb()
    cb, scb, _ = F.int8_vectorwise_quant(w)
    return [cb, scb, F.int8_vectorwise_dequant(cb, scb)]


def bnb_linear4bit(x, w, b, quant_type, blocksize, double_quant=False):
    """bnb.nn.Linear4bit (fp32 compute) over `w`: its output and the gradient of sum(output) to x."""
    _bnb()
    import bitsandbytes as bnb
    layer = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=b.numel() > 0, compute_dtype=torch.float32,
                              quant_type=quant_type, compress_statistics=double_quant)
    layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=quant_type, blocksize=blocksize,
                                     compress_statistics=double_quant)._quantize("cpu")
    if b.numel():
        layer.bias = torch.nn.Parameter(b)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    return [y, x.grad]


def bnb_causal_lm_logits(ids, model_dir, quant_type, double_quant=False):
    """transformers loading `model_dir` with BitsAndBytesConfig(load_in_4bit) on the CPU, fp32 compute."""
    _bnb()
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.float32)
    model_type = json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    extra = {"attn_implementation": "eager"} if model_type in ("gemma2", "gemma3_text") else {}
    if model_type == "gpt2":  # train() below would turn GPT-2's dropouts on
        extra.update(attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=torch.float32,
                                                 device_map="cpu", **extra)
    # With gradients on (the embeddings require them), Linear4bit runs bitsandbytes' training path
    # (dequantize, then linear), the one QLoRA trains through. Its no-grad CPU path (gemm_4bit,
    # bitsandbytes 0.50) gives other numbers: up to 0.4 apart in these logits from its own
    # dequantized weights.
    model.train()
    return [model(ids).logits.detach()]


FUNCTIONS.update({f.__name__: f for f in (bnb_quantize_4bit, bnb_dequantize_4bit, bnb_dynamic_map, bnb_int8,
                                          bnb_linear4bit, bnb_causal_lm_logits)})



def _bnb_logits_both_modes(ids, model_dir):
    """transformers loading a bitsandbytes directory on the CPU (fp32 compute): logits in eval mode
    (no grad: Linear8bitLt's LLM.int8 product) and in train mode (Linear4bit/Linear8bitLt's
    dequantize-then-linear path, the one training runs through)."""
    _bnb()
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
    # Train mode first: eval mode repacks 4-bit weights for bitsandbytes' CPU kernel, for good.
    train_logits = model.train()(ids).logits.detach()
    with torch.no_grad():
        eval_logits = model.eval()(ids).logits
    return [eval_logits, train_logits]


def bnb_save_quantized(ids, src_dir, out_dir, cases):
    """For each case {"name", "config": BitsAndBytesConfig kwargs}: transformers loads `src_dir` with
    that config, saves it to out_dir/name (tokenizer files copied along), and reloads it from there;
    outputs its eval- and train-mode logits, case after case."""
    _bnb()
    import shutil
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    out = []
    for case in cases:
        kwargs = dict(case["config"])
        for k in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            if k in kwargs:
                kwargs[k] = DTYPES[kwargs[k]]
        target = os.path.join(out_dir, case["name"])
        model = AutoModelForCausalLM.from_pretrained(src_dir, quantization_config=BitsAndBytesConfig(**kwargs),
                                                     dtype=torch.float32, device_map="cpu")
        model.save_pretrained(target)
        for f in os.listdir(src_dir):
            if f.startswith("tokenizer") or f.endswith(".jinja") or f == "generation_config.json":
                shutil.copy(os.path.join(src_dir, f), target)
        out += _bnb_logits_both_modes(ids, target)
    return out


def bnb_load_logits(ids, model_dirs):
    """transformers + bitsandbytes loading quantized directories written by llmtune: eval- and
    train-mode logits, directory after directory."""
    return [t for d in model_dirs for t in _bnb_logits_both_modes(ids, d)]


def bnb_linear8bit(x, w, b, threshold):
    """bnb.nn.Linear8bitLt over `w` (int8 weights, has_fp16_weights=False) on the CPU: the eval-mode
    output (LLM.int8 with outlier decomposition), and the train-mode output and gradient of
    sum(output) to x."""
    _bnb()
    import bitsandbytes as bnb
    layer = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=b.numel() > 0, has_fp16_weights=False, threshold=threshold)
    layer.weight = bnb.nn.Int8Params(w.to(torch.float16), requires_grad=False, has_fp16_weights=False)._quantize("cpu")
    if b.numel():
        layer.bias = torch.nn.Parameter(b)
    cb, scb = layer.weight.data.clone(), layer.weight.SCB.clone()  # the first forward moves them into layer.state
    with torch.no_grad():
        y_eval = layer.eval()(x.clone())
    x = x.clone().requires_grad_(True)
    y = layer.train()(x)
    y.sum().backward()
    return [cb, scb, y_eval, y, x.grad]


FUNCTIONS.update({f.__name__: f for f in (bnb_save_quantized, bnb_load_logits, bnb_linear8bit)})
