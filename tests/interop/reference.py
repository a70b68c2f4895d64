"""Reference computations for the C++ interop tests (tests/support/interop.h).

Usage: reference.py DIR, where DIR/manifest.json names a function, its params and its input
tensors (raw little-endian files). Outputs are written to DIR as out<i>.bin + outputs.json.
Every function here calls the reference implementation itself (transformers, peft, ...),
never a re-implementation of ours.
"""
import json
import os
import sys

import torch

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "bool": torch.bool, "uint8": torch.uint8,
}
NAMES = {v: k for k, v in DTYPES.items()}


def _rms_norm(module_cls, x, weight, eps):
    norm = module_cls(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


def rms_norm_llama(x, weight, eps):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    return [_rms_norm(LlamaRMSNorm, x, weight, eps)]


def rms_norm_gemma(x, weight, eps):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    return [_rms_norm(GemmaRMSNorm, x, weight, eps)]


_MODELS = {}


def _model(model_dir, dtype):
    key = (model_dir, dtype)
    if key not in _MODELS:
        from transformers import AutoModelForCausalLM
        _MODELS[key] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype]).eval()
    return _MODELS[key]


def causal_lm_logits(ids, model_dir, dtype="float32"):
    """transformers' logits for token ids (B, T)."""
    with torch.no_grad():
        return [_model(model_dir, dtype)(input_ids=ids).logits]


def causal_lm_greedy(ids, model_dir, max_new_tokens, dtype="float32"):
    """Greedy continuation of ids (1, T) with transformers' generate (no stopping at EOS)."""
    model = _model(model_dir, dtype)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             eos_token_id=None, pad_token_id=0)
    return [out[:, ids.shape[1]:]]


def causal_lm_loss(ids, model_dir, dtype="float32"):
    """Token-weighted mean next-token loss over rows of ids (B, T) and the number of tokens."""
    model = _model(model_dir, dtype)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    return [loss.double().reshape(1), torch.tensor([ids.shape[0] * (ids.shape[1] - 1)], dtype=torch.int64)]


def peft_adapter_logits(ids, model_dir, adapter_dir, kind="lora", targets="q_proj,v_proj", seed=0):
    """Builds a PEFT adapter with non-zero B on the fixture model, saves it to adapter_dir, and
    returns the adapted model's logits for ids. kind: lora | rslora | dora."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    target = "all-linear" if targets == "all-linear" else targets.split(",")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target, init_lora_weights=False,
                        use_rslora=kind == "rslora", use_dora=kind == "dora", task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.normal_(0.0, 0.2)
            elif "lora_magnitude" in name:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
        model.save_pretrained(adapter_dir)
        return [model(input_ids=ids).logits]


def lr_schedules(cases):
    """transformers' LR multipliers for steps 0..total (LambdaLR on a base LR of 1), one tensor per
    [kind, warmup_steps, total_steps] case."""
    import transformers
    out = []
    for kind, warmup_steps, total_steps in cases:
        fn = {"constant": transformers.get_constant_schedule_with_warmup,
              "linear": transformers.get_linear_schedule_with_warmup,
              "cosine": transformers.get_cosine_schedule_with_warmup}[kind]
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        kwargs = {"num_warmup_steps": warmup_steps}
        if kind != "constant":
            kwargs["num_training_steps"] = total_steps
        sched = fn(opt, **kwargs)
        out.append(torch.tensor([sched.lr_lambdas[0](s) for s in range(total_steps + 1)], dtype=torch.float64))
    return out


def full_finetune_grads(ids, labels, model_dir, names):
    """transformers' training loss (labels with -100, mean over targets) and the gradients of the
    named weights (comma-separated) after backward: [loss, grad...]."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()  # dropout-free fixtures: train mode only matters for the code path
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    params = dict(model.named_parameters())
    return [out.loss.detach()] + [params[n].grad for n in names.split(",")]


def adamw_steps(p_decay, p_no_decay, grads_decay, grads_no_decay, lr, beta1, beta2, eps, weight_decay, max_norm):
    """torch.optim.AdamW on two parameters (one in a weight-decay group, one without), one step per
    row of grads_* (after clip_grad_norm_ with max_norm when > 0); returns both parameters after
    every step stacked, and the pre-clip norms."""
    a = torch.nn.Parameter(p_decay.clone())
    b = torch.nn.Parameter(p_no_decay.clone())
    opt = torch.optim.AdamW([{"params": [a], "weight_decay": weight_decay}, {"params": [b], "weight_decay": 0.0}],
                            lr=lr, betas=(beta1, beta2), eps=eps, foreach=False)
    out_a, out_b, norms = [], [], []
    for ga, gb in zip(grads_decay, grads_no_decay):
        a.grad, b.grad = ga.clone(), gb.clone()
        norms.append(torch.nn.utils.clip_grad_norm_([a, b], max_norm if max_norm > 0 else float("inf")))
        opt.step()
        out_a.append(a.detach().clone())
        out_b.append(b.detach().clone())
    return [torch.stack(out_a), torch.stack(out_b), torch.stack(norms)]


FUNCTIONS = {f.__name__: f for f in (adamw_steps, rms_norm_llama, rms_norm_gemma, causal_lm_logits, causal_lm_greedy,
                                     causal_lm_loss, peft_adapter_logits, lr_schedules, full_finetune_grads)}


def main(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    inputs = []
    for spec in manifest["inputs"]:
        with open(os.path.join(directory, spec["file"]), "rb") as f:
            data = bytearray(f.read())
        dtype = DTYPES[spec["dtype"]]
        t = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        inputs.append(t.reshape(spec["shape"]))
    outputs = FUNCTIONS[manifest["function"]](*inputs, **manifest["params"])
    listing = []
    for i, t in enumerate(outputs):
        t = t.detach().contiguous().cpu()
        name = f"out{i}.bin"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        listing.append({"file": name, "dtype": NAMES[t.dtype], "shape": list(t.shape)})
    with open(os.path.join(directory, "outputs.json"), "w") as f:
        json.dump(listing, f)


if __name__ == "__main__":
    main(sys.argv[1])
