"""PEFT and transformers references for LoRA / DoRA / full fine-tuning on every model family
(tests/peft/test_lora_families.cpp): Gemma 2/3 run eagerly (their attention soft-cap exists only
there) and GPT-2 without its dropouts, so that training-mode gradients are deterministic. GPT-2's
Conv1D modules are PEFT's fan_in_fan_out layers: PEFT itself decides how they are adapted.
"""
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _base(model_dir, dtype="float32"):
    from transformers import AutoModelForCausalLM
    config = json.loads((Path(model_dir) / "config.json").read_text())
    extra = {}
    if config.get("model_type") in ("gemma2", "gemma3_text"):
        extra["attn_implementation"] = "eager"
    if config.get("model_type") == "gpt2":
        extra.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=_DTYPES[dtype], **extra)


def _peft_name(ours):
    """Our file key -> the live PeftModel parameter name (adapter "default" inserted)."""
    if ours.endswith(".lora_magnitude_vector"):
        return ours + ".default.weight"
    for part in (".lora_A.", ".lora_B."):
        if part in ours:
            return ours.replace(part, part + "default.")
    raise ValueError(f"not a LoRA key: {ours}")


def _config(case):
    from peft import LoraConfig
    targets = case["targets"]  # "all-linear", "re:<regex>" or "name,name,..."
    target = targets if targets == "all-linear" else targets[3:] if targets.startswith("re:") else targets.split(",")
    kind = case.get("kind", "lora")
    return LoraConfig(r=case.get("r", 4), lora_alpha=case.get("alpha", 8), lora_dropout=case.get("dropout", 0.0),
                      target_modules=target, use_rslora=kind == "rslora", use_dora=kind == "dora",
                      fan_in_fan_out=case.get("fan_in_fan_out", False), task_type="CAUSAL_LM")


def _no_fan_in_fan_out_fixup(fn):
    """Runs fn, failing if PEFT had to correct fan_in_fan_out (the config did not fit the layers)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    fixed = [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]
    if fixed:
        raise ValueError(f"PEFT corrected fan_in_fan_out: {fixed[0]}")
    return result


def peft_family_grads(ids, labels, *tensors, cases):
    """Per case {model_dir, kind, targets, fan_in_fan_out, names, dtype?}: PEFT's model with the given
    adapter tensors (`names` order, our file keys), transformers' loss for (ids, labels) and the
    gradient of each tensor. Returns per case: loss (float64, 1) then one gradient per name."""
    from peft import get_peft_model
    out, at = [], 0
    for case in cases:
        names = case["names"]
        given = dict(zip(names, tensors[at:at + len(names)]))
        at += len(names)
        base = _base(case["model_dir"], case.get("dtype", "float32"))
        model = _no_fan_in_fan_out_fixup(lambda: get_peft_model(base, _config(case)))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        wanted = {_peft_name(n): n for n in names}
        if set(params) != set(wanted):
            raise ValueError(f"trainable tensors differ: peft-only {sorted(set(params) - set(wanted))[:4]}, "
                             f"ours-only {sorted(set(wanted) - set(params))[:4]}")
        with torch.no_grad():
            for peft_name, name in wanted.items():
                if params[peft_name].shape != given[name].shape:
                    raise ValueError(f"{name}: PEFT's shape {tuple(params[peft_name].shape)}, ours {tuple(given[name].shape)}")
                params[peft_name].copy_(given[name])
        model.train(False)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        out.append(loss.detach().double().reshape(1))
        out.extend(params[_peft_name(n)].grad for n in names)
    return out


def peft_family_init(model_dir, targets, kind, fan_in_fan_out):
    """PEFT's DoRA magnitude at init (its weight-norm convention, Conv1D included) per targeted
    module, sorted by name: names (uint8, newline-joined), then one magnitude per module."""
    from peft import get_peft_model
    base = _base(model_dir)
    case = {"targets": targets, "kind": kind, "fan_in_fan_out": fan_in_fan_out}
    model = _no_fan_in_fan_out_fixup(lambda: get_peft_model(base, _config(case)))
    state = dict(model.named_parameters())
    names = sorted(model.targeted_module_names)
    out = [torch.tensor(list("\n".join(names).encode()), dtype=torch.uint8)]
    out.extend(state[f"base_model.model.{n}.lora_magnitude_vector.default.weight"].detach() for n in names)
    return out


def peft_family_adapters(ids, cases):
    """Per case {model_dir, adapter_dir, kind, targets, seed}: PEFT builds an adapter with random A, B
    (and moved magnitudes) on the model, saves it to adapter_dir; returns each adapted model's logits
    for ids."""
    from peft import get_peft_model
    out = []
    for case in cases:
        base = _base(case["model_dir"])
        config = dict(case, fan_in_fan_out=base.config.model_type == "gpt2")
        torch.manual_seed(case.get("seed", 0))
        model = _no_fan_in_fan_out_fixup(lambda: get_peft_model(base, _config(config))).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "lora_A" in name:
                    p.normal_(0.0, 0.2)
                elif "lora_magnitude" in name:
                    p.mul_(1.0 + 0.1 * torch.randn_like(p))
            model.save_pretrained(case["adapter_dir"])
            out.append(model(input_ids=ids).logits)
    return out


def peft_family_saved(ids, cases):
    """Per case [model_dir, adapter_dir (saved by llmtune), merged_dir or ""]: PEFT loads the adapter
    as saved (every tensor from the file used, no fan_in_fan_out correction, the config re-saved by
    PEFT field for field ours) and returns base+adapter logits; when merged_dir is given,
    transformers' logits of that merged directory, then PEFT's merge_and_unload logits."""
    from peft import LoraConfig, PeftModel
    from safetensors.torch import load_file
    out = []
    for model_dir, adapter_dir, merged_dir in cases:
        ours = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            LoraConfig.from_pretrained(adapter_dir).save_pretrained(tmp)
            theirs = json.loads((Path(tmp) / "adapter_config.json").read_text())
        for d in (ours, theirs):
            if isinstance(d.get("target_modules"), list):
                d["target_modules"] = sorted(d["target_modules"])
        if ours != theirs or any(type(ours[k]) is not type(theirs[k]) for k in ours):
            diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            raise ValueError(f"{adapter_dir}: config fields differ from PEFT's re-save: {diff}")
        model = _no_fan_in_fan_out_fixup(lambda: PeftModel.from_pretrained(_base(model_dir), adapter_dir)).eval()
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
            if merged_dir:
                out.append(_base(merged_dir).eval()(input_ids=ids).logits)
                out.append(model.merge_and_unload()(input_ids=ids).logits)
    return out


def full_family_grads(ids, labels, model_dir, names):
    """transformers' training loss (train mode, GPT-2's dropouts off) and the gradients of the named
    parameters (comma-separated, transformers' names and layouts): [loss, grad...]."""
    model = _base(model_dir)
    model.train()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    params = dict(model.named_parameters())
    return [out.loss.detach().double().reshape(1)] + [params[n].grad for n in names.split(",")]


FUNCTIONS = {f.__name__: f for f in (peft_family_grads, peft_family_init, peft_family_adapters, peft_family_saved,
                                     full_family_grads)}
