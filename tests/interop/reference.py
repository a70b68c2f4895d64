"""Reference computations for the C++ interop tests (tests/support/interop.h).

Usage: reference.py DIR, where DIR/manifest.json names a function, its params and its input
tensors (raw little-endian files). Outputs are written to DIR as out<i>.bin + outputs.json.
Every function here calls the reference implementation itself (transformers, peft, ...),
never a re-implementation of ours.
"""
import json
from pathlib import Path
import os
import sys

import torch

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8,
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
        # Gemma 2/3 soft-cap attention scores only in the eager implementation.
        config = json.loads((Path(model_dir) / "config.json").read_text())
        extra = {"attn_implementation": "eager"} if config.get("model_type") in ("gemma2", "gemma3_text") else {}
        _MODELS[key] = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype], **extra).eval()
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


def _peft_name(ours):
    """Our PEFT file key -> the live PeftModel parameter name (adapter "default" inserted)."""
    if ours.endswith(".lora_magnitude_vector"):
        return ours + ".default.weight"
    for part in (".lora_A.", ".lora_B."):
        if part in ours:
            return ours.replace(part, part + "default.")
    raise ValueError(f"not a LoRA key: {ours}")


def _lora_config(case, **extra):
    from peft import LoraConfig
    targets = case["targets"]  # "all-linear", "re:<regex over full paths>" or "name,name,..."
    target = targets if targets == "all-linear" else targets[3:] if targets.startswith("re:") else targets.split(",")
    kind = case.get("kind", "lora")
    return LoraConfig(r=case.get("r", 4), lora_alpha=case.get("alpha", 8), lora_dropout=case.get("dropout", 0.0),
                      target_modules=target, use_rslora=kind == "rslora", use_dora=kind == "dora",
                      task_type="CAUSAL_LM", **extra)


def _set_trainable(model, ours):
    """Copies our tensors (by our name) into the PEFT model's trainable parameters, after checking
    that the two sets of names are the same; returns PEFT's trainable parameters by PEFT's name."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wanted = {_peft_name(n): n for n in ours}
    if set(params) != set(wanted):
        raise ValueError(f"trainable tensors differ: peft-only {sorted(set(params) - set(wanted))[:4]}, "
                         f"ours-only {sorted(set(wanted) - set(params))[:4]}")
    with torch.no_grad():
        for peft_name, name in wanted.items():
            params[peft_name].copy_(ours[name])
    return params


def peft_lora_grads(ids, labels, *tensors, cases):
    """For each case {model_dir, kind, targets, r, alpha, dropout, seed, names, dtype, rank_pattern, alpha_pattern}: PEFT's model on the
    fixture with the given adapter tensors (in `names` order, our file keys), transformers' loss for
    (ids, labels) and its gradients. Returns per case: loss (float64, 1) then one grad per name.
    With dropout > 0 the model is in training mode and torch is seeded with `seed` first."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    out, at = [], 0
    for case in cases:
        names = case["names"]
        given = dict(zip(names, tensors[at:at + len(names)]))
        at += len(names)
        dtype = DTYPES[case.get("dtype", "float32")]
        base = AutoModelForCausalLM.from_pretrained(case["model_dir"], dtype=dtype)
        patterns = {k: case[k] for k in ("rank_pattern", "alpha_pattern") if case.get(k)}
        model = get_peft_model(base, _lora_config(case, **patterns))
        params = _set_trainable(model, given)
        model.train(case.get("dropout", 0.0) > 0)
        torch.manual_seed(case.get("seed", 0))
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        out.append(loss.detach().double().reshape(1))
        out.extend(params[_peft_name(n)].grad for n in names)
    return out


def _encode_names(names):
    return torch.tensor(list("\n".join(names).encode()), dtype=torch.uint8)


def peft_targeted_modules(model_dir, cases):
    """The module names get_peft_model targets on the fixture, per case {targets, exclude_modules?,
    layers_to_transform?}, each as one uint8 tensor of names joined by newlines."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    out = []
    for case in cases:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        targets = case["targets"]
        extra = {k: case[k] for k in ("exclude_modules", "layers_to_transform", "layers_pattern") if k in case}
        model = get_peft_model(base, _lora_config({"targets": targets}, **extra))
        out.append(_encode_names(model.targeted_module_names))
    return out


def peft_init(model_dir, targets, kind="dora", r=4, alpha=8):
    """PEFT's default init on the fixture: per targeted module (sorted by name), lora_A and the
    DoRA magnitude. Returns names (uint8) then A0, m0, A1, m1, ..."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(base, _lora_config({"targets": targets, "kind": kind, "r": r, "alpha": alpha}))
    state = dict(model.named_parameters())
    names = sorted(model.targeted_module_names)
    out = [_encode_names(names)]
    for n in names:
        out.append(state[f"base_model.model.{n}.lora_A.default.weight"].detach())
        out.append(state[f"base_model.model.{n}.lora_magnitude_vector.default.weight"].detach())
    return out


def peft_load_saved(ids, cases):
    """Loads each adapter directory of cases [[model_dir, adapter_dir], ...] (written by llmtune) with PeftModel.from_pretrained and returns its
    logits for ids. Fails unless every LoRA tensor of the loaded model comes from the file and every
    file tensor is used, and unless LoraConfig.from_pretrained re-saves our adapter_config.json with the
    same fields and values (types included) as ours."""
    import tempfile
    from peft import LoraConfig, PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    out = []
    for model_dir, adapter_dir in cases:
        with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
            ours = json.load(f)
        config = LoraConfig.from_pretrained(adapter_dir)
        with tempfile.TemporaryDirectory() as tmp:
            config.save_pretrained(tmp)
            with open(os.path.join(tmp, "adapter_config.json")) as f:
                theirs = json.load(f)
        for d in (ours, theirs):
            if isinstance(d.get("target_modules"), list):
                d["target_modules"] = sorted(d["target_modules"])
        if set(ours) != set(theirs):
            raise ValueError(f"{adapter_dir}: config fields differ: ours-only {sorted(set(ours) - set(theirs))}, "
                             f"peft-only {sorted(set(theirs) - set(ours))}")
        for k in ours:
            if ours[k] != theirs[k] or type(ours[k]) is not type(theirs[k]):
                raise ValueError(f"{adapter_dir}: config field {k}: ours {ours[k]!r}, PEFT {theirs[k]!r}")
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
        saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
        live = {n: p for n, p in model.named_parameters() if "lora_" in n}
        expected = {_peft_name(k): k for k in saved}
        if set(live) != set(expected):
            raise ValueError(f"{adapter_dir}: missing {sorted(set(live) - set(expected))[:4]}, "
                             f"unexpected {sorted(set(expected) - set(live))[:4]}")
        for n, p in live.items():
            if not torch.equal(p.detach(), saved[expected[n]].to(p.dtype)):
                raise ValueError(f"{adapter_dir}: {n} differs from the file")
        with torch.no_grad():
            out.append(model(input_ids=ids).logits)
    return out


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
                                     causal_lm_loss, peft_adapter_logits, peft_lora_grads, peft_targeted_modules,
                                     peft_init, peft_load_saved, lr_schedules, full_finetune_grads)}



# bitsandbytes references (quantize/dequantize, Linear4bit/8bit, transformers loading with it): bnb_reference.py.
from bnb_reference import FUNCTIONS as BNB_FUNCTIONS, _bnb  # noqa: E402

FUNCTIONS.update(BNB_FUNCTIONS)

# Pruning references (Wanda, SparseGPT, structured importance): tests/interop/prune_reference.py.
from prune_reference import prune_reference, sparsegpt_reference, structured_reference  # noqa: E402

FUNCTIONS.update({f.__name__: f for f in (sparsegpt_reference, prune_reference, structured_reference)})
# GPTQ and RTN written from the published algorithm: gptq_reference.py.
from gptq_reference import FUNCTIONS as GPTQ_FUNCTIONS  # noqa: E402

FUNCTIONS.update(GPTQ_FUNCTIONS)
# Distillation references (TRL's GKD, torchtune's KD loss, top-k buckets): distill_reference.py.
from distill_reference import FUNCTIONS as DISTILL_FUNCTIONS  # noqa: E402

FUNCTIONS.update(DISTILL_FUNCTIONS)
# RoPE scaling and partial rotary through transformers' rotary code: rope_reference.py.
from rope_reference import FUNCTIONS as ROPE_FUNCTIONS  # noqa: E402

FUNCTIONS.update(ROPE_FUNCTIONS)
# LoRA / DoRA / full fine-tuning on every family (eager Gemma 2/3, GPT-2's Conv1D): peft_families_reference.py.
from peft_families_reference import FUNCTIONS as PEFT_FAMILY_FUNCTIONS  # noqa: E402

FUNCTIONS.update(PEFT_FAMILY_FUNCTIONS)


def peft_module_ranks(model_dir, cases):
    """Per case {targets, r?, alpha?, rank_pattern?, alpha_pattern?, layers_to_transform?, layers_pattern?}:
    the modules get_peft_model adapts (sorted, one uint8 tensor of names joined by newlines), then
    each one's rank (int64) and scaling (float64), as PEFT resolves the pattern keys."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    out = []
    for case in cases:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        extra = {k: case[k] for k in ("rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern") if k in case}
        model = get_peft_model(base, _lora_config(case, **extra))
        layers = sorted((name[len("base_model.model."):], m) for name, m in model.named_modules()
                        if hasattr(m, "lora_A") and "default" in m.lora_A)
        out.append(_encode_names([name for name, _ in layers]))
        out.append(torch.tensor([m.r["default"] for _, m in layers], dtype=torch.int64))
        out.append(torch.tensor([m.scaling["default"] for _, m in layers], dtype=torch.float64))
    return out


FUNCTIONS[peft_module_ranks.__name__] = peft_module_ranks




# QLoRA references: transformers loading the fixture with BitsAndBytesConfig (fp32 compute) and PEFT
# over its Linear4bit modules. `modules` (module paths) with per module the 4-bit state to use:
# packed, absmax and, with double quant, nested_absmax and the offset (float32 [1]), so that both
# sides run the same base; bitsandbytes' own quantization of the same weights is compared with it.


def _qlora_base(model_dir, quant_type, double_quant, modules, states):
    """The bnb 4-bit model with the given states put in; and per module [packed bytes that differ
    from bitsandbytes' own quantization, max |absmax - bitsandbytes' absmax|] (float64, summed/maxed)."""
    _bnb()
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=torch.float32, device_map="cpu")
    per = 4 if double_quant else 2
    if len(states) != per * len(modules):
        raise ValueError(f"{len(states)} state tensors for {len(modules)} modules")
    bytes_differ, absmax_diff = 0, 0.0
    for i, name in enumerate(modules):
        layer = model.get_submodule(name)
        if not isinstance(layer, bnb.nn.Linear4bit):
            raise ValueError(f"{name} is not a bitsandbytes Linear4bit")
        w, qs = layer.weight, layer.weight.quant_state
        packed, absmax = states[per * i], states[per * i + 1]
        if w.data.shape != packed.shape or qs.absmax.shape != absmax.shape:
            raise ValueError(f"{name}: packed {tuple(packed.shape)} / absmax {tuple(absmax.shape)} vs bitsandbytes "
                             f"{tuple(w.data.shape)} / {tuple(qs.absmax.shape)}")
        bytes_differ += int((w.data != packed).sum())
        if double_quant:
            ours = _bnb().dequantize_blockwise(absmax, absmax=states[per * i + 2], code=qs.state2.code, blocksize=256) + states[per * i + 3]
            theirs = _bnb().dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
        else:
            ours, theirs = absmax, qs.absmax
        absmax_diff = max(absmax_diff, float((ours - theirs).abs().max()))
        w.data = packed.clone()
        qs.absmax = absmax.clone()
        if double_quant:
            qs.state2.absmax = states[per * i + 2].clone()
            qs.offset = states[per * i + 3].reshape(()).clone()
    # Gradients flow from the embeddings on, as prepare_model_for_kbit_training arranges: Linear4bit
    # then runs bitsandbytes' training path (dequantize, then matmul), the one QLoRA trains through.
    model.enable_input_require_grads()
    return model, torch.tensor([float(bytes_differ), absmax_diff], dtype=torch.float64)


def _qlora_peft(model_dir, case, states):
    from peft import get_peft_model
    base, mismatch = _qlora_base(model_dir, case["quant_type"], case["double_quant"], case["modules"], states)
    model = get_peft_model(base, _lora_config(case))
    return model, mismatch


def peft_qlora_grads(ids, labels, *tensors, cases):
    """Per case {model_dir, quant_type, double_quant, modules, kind, targets, r, alpha, names}: the
    adapter tensors (`names`, our file keys) then the base's states; PEFT's loss and gradients over
    bnb Linear4bit. Returns per case: loss (float64 [1]), one grad per name, the mismatch [2]."""
    out, at = [], 0
    for case in cases:
        names, per = case["names"], 4 if case["double_quant"] else 2
        given = tensors[at:at + len(names)]
        states = tensors[at + len(names):at + len(names) + per * len(case["modules"])]
        at += len(names) + per * len(case["modules"])
        model, mismatch = _qlora_peft(case["model_dir"], case, states)
        params = _set_trainable(model, dict(zip(names, given)))
        model.train()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        out.append(loss.detach().double().reshape(1))
        out.extend(params[_peft_name(n)].grad for n in names)
        out.append(mismatch)
    return out


def peft_qlora_train(ids, labels, mask, *states, model_dir, quant_type, double_quant, modules, kind, targets, r, alpha,
                     first, steps, lr, warmup_steps, weight_decay, max_grad_norm):
    """PEFT + torch AdamW + transformers' cosine schedule over the bnb base, from the adapter tensors
    in `first` (a safetensors file of our keys): the loss of every step (float64 [steps]), the keys
    (sorted, uint8 joined by newlines) and the adapter tensors after the last step in that order."""
    from safetensors.torch import load_file
    from transformers import get_cosine_schedule_with_warmup
    case = {"quant_type": quant_type, "double_quant": double_quant, "modules": modules, "kind": kind, "targets": targets,
            "r": r, "alpha": alpha}
    model, _ = _qlora_peft(model_dir, case, states)
    start = load_file(first)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != {_peft_name(k) for k in start}:
        raise ValueError(f"{first}: its tensors are not PEFT's trainable ones")
    with torch.no_grad():
        for k, t in start.items():
            params[_peft_name(k)].copy_(t)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps, steps)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    keys = sorted(start)
    return [torch.tensor(losses, dtype=torch.float64), _encode_names(keys)] + [params[_peft_name(k)].detach() for k in keys]


FUNCTIONS.update({f.__name__: f for f in (peft_qlora_grads, peft_qlora_train)})


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
