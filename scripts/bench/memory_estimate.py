"""Estimates the device memory of an `llmtune finetune` preset: weights, trainable parameters with their
gradients and AdamW state, activations, the loss, and a total against common GPU sizes.

Usage: python scripts/bench/memory_estimate.py [configs/X.yaml ...] [--device cuda|cpu] [--unchunked]
       (no file: every configs/*.yaml that trains a model)

It computes; it does not measure. The model's shape comes from the preset's model.path: a local
directory's config.json, or, for the hub ids the presets name (no network here), the published
config.json values hard-coded in KNOWN_SHAPES below. Settings not in the preset take llmtune's
defaults (README, "llmtune finetune" keys).

Assumptions (per token of a micro-batch of B x T tokens; s = bytes of the compute dtype: 2 for
bf16/fp16, 4 for fp32; dtype auto = bf16 on CUDA, fp32 on CPU):
  - Packing fills every row to about T tokens, so a micro-batch is B*T tokens (without packing, rows
    are padded to the batch's longest, so B*T is the worst case instead of the usual one).
  - Weights: every parameter once in the compute dtype. LoRA: the base weights are frozen; the
    adapters (r*(in+out) per adapted linear layer) are fp32 with fp32 gradients and AdamW's two fp32
    moments: 16 bytes per adapter parameter. Full fine-tuning: fp32 master weights (4 B), a
    compute-dtype copy made for the forward and alive until backward (s B; none in fp32), fp32
    gradients (4 B) and AdamW moments (8 B) per parameter; nothing frozen.
  - Activations saved for backward, per decoder layer (a Llama/Mistral/Qwen2 layer: RMSNorm,
    q/k/v/o, SwiGLU MLP), as transformers + PEFT's math keeps them (llmtune computes the same math):
    each of the two RMSNorms its fp32 input and 1/rms (2 x (4*h + 4)); q, k and v after RoPE and
    the attention output ((2*q_dim + 2*kv_dim)*s) and the logsumexp (heads*4: flash or
    variable-length flash attention, which keeps no T x T matrix and no dense mask, as the packed path
    being built does); the MLP's gate, up and SiLU(gate) (3*I*s). A frozen linear layer keeps nothing
    per token (its input's gradient needs only its weight). Each LoRA module keeps its dropout mask
    (d_in bytes on CUDA, where it is bool; 4*d_in on CPU, where it is a float tensor), its dropped
    input in fp32 (4*d_in; d_in = in_features of the layer; with dropout 0 the fp32 copy alone, none
    when computing in fp32) and A's output (4*r). Full fine-tuning adds the inputs of the trainable
    linear layers and norm weights (4*h*s + q_dim*s + I*s).
    Checked against what autograd keeps (torch.autograd.graph.saved_tensors_hooks) for transformers
    5.24 + PEFT 0.21, 135M shape, bf16, LoRA r 16 all-linear, dropout 0.05, on CPU: 57,324 bytes per
    token and layer measured, and exactly that by this count with CPU's float masks (42,348 with
    CUDA's bool masks, the figure used for GPUs).
    --attention dense adds a materialised (B, heads, T, T) probability matrix in the compute dtype and
    a (B, 1, T, T) bool mask per layer, what SDPA's math kernel keeps.
  - Gradient checkpointing keeps only each layer's input (h*s per token per layer) and recomputes one
    layer at a time in backward; either way backward needs about one more layer's worth of
    activations as its working set. So: without checkpointing L+1 layers' activations; with it
    L layer inputs + 2 layers' activations.
  - Loss: the final RMSNorm's input and output (2*h*s) and, for the chunked linear + cross-entropy
    being built, the gradient of the hidden states computed in the forward (4*h, fp32) plus one chunk
    of fp32 logits: chunk rows = max(32, 64 MiB / (4*V)), counted 3 times (logits, their softmax,
    the gradient). Unchunked (the loss as it was, --unchunked): B*T*V*4 bytes x 3 (the fp32 upcast,
    cross-entropy's fp32 copy for backward, the gradient).
  - Not counted: the CUDA context and allocator slack, added to the GPU total as 0.5 GiB + 10%;
    eval (no gradients, smaller); the tokenizer and data on the host.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GIB = 2 ** 30
GPU_SIZES_GB = (8, 12, 16, 24, 32, 40, 48, 80)  # marketed sizes; a "24 GB" card has 24 GiB

# Published config.json values (Hugging Face model repos, files named in each comment).
KNOWN_SHAPES = {
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, attention_bias=False),
    # meta-llama/Meta-Llama-3-8B config.json (Llama-3.1-8B-Instruct has the same shape)
    "meta-llama/Meta-Llama-3-8B": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, attention_bias=False),
    # mistralai/Mistral-7B-Instruct-v0.3 config.json
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32768, tie_word_embeddings=False, attention_bias=False),
    # Qwen/Qwen2.5-0.5B-Instruct config.json (Qwen2: q/k/v projections have biases)
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, attention_bias=True),
}
ALIASES = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "Qwen/Qwen2.5-0.5B": "Qwen/Qwen2.5-0.5B-Instruct",
    "mistralai/Mistral-7B-v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
}

# llmtune's defaults for the keys used here (README, "llmtune finetune").
DEFAULTS = {"method": "lora", "lora.r": 16, "lora.dropout": 0.05, "lora.target_modules": "all-linear",
            "data.max_seq_len": 2048, "data.packing": True, "train.batch_size": 4,
            "train.grad_checkpointing": False, "dtype": "auto"}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def model_shape(path):
    local = Path(path) if Path(path).is_absolute() else ROOT / path
    if (local / "config.json").exists():
        c = json.loads((local / "config.json").read_text(encoding="utf-8"))
        source = f"{path}/config.json"
    elif ALIASES.get(path, path) in KNOWN_SHAPES:
        c = KNOWN_SHAPES[ALIASES.get(path, path)]
        source = f"published config.json of {ALIASES.get(path, path)}"
    else:
        raise SystemExit(f"{path}: no config.json there and not one of the known hub ids ({', '.join(KNOWN_SHAPES)})")
    h, heads = c["hidden_size"], c["num_attention_heads"]
    hd = c.get("head_dim") or h // heads
    return dict(h=h, I=c["intermediate_size"], L=c["num_hidden_layers"], heads=heads,
                kv=c.get("num_key_value_heads") or heads, hd=hd, V=c["vocab_size"],
                tied=bool(c.get("tie_word_embeddings", False)), qkv_bias=bool(c.get("attention_bias", False)),
                source=source)


def linear_shapes(m):
    """(name, in_features, out_features) of one decoder layer's linear layers."""
    q, kv = m["heads"] * m["hd"], m["kv"] * m["hd"]
    h, I = m["h"], m["I"]
    return [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h),
            ("gate_proj", h, I), ("up_proj", h, I), ("down_proj", I, h)]


def n_params(m):
    per_layer = sum(i * o for _, i, o in linear_shapes(m)) + 2 * m["h"]
    if m["qkv_bias"]:
        per_layer += (m["heads"] + 2 * m["kv"]) * m["hd"]
    embed = m["V"] * m["h"]
    return embed + (0 if m["tied"] else embed) + m["L"] * per_layer + m["h"]


def targets(spec):
    if spec in ("all-linear", "all_linear", None):
        return set(ALL_LINEAR)
    names = spec if isinstance(spec, list) else [x.strip() for x in str(spec).strip("[]").split(",")]
    return {n for n in names if n}


def estimate(preset, device="cuda", unchunked=False, attention="flash"):
    cfg = flatten(yaml.safe_load(Path(preset).read_text(encoding="utf-8")))
    get = lambda k: cfg.get(k, DEFAULTS.get(k))
    m = model_shape(cfg["model.path"])
    method = get("method")
    B, T = int(get("train.batch_size")), int(get("data.max_seq_len"))
    dtype = get("dtype")
    if dtype == "auto":
        dtype = "bf16" if device == "cuda" else "fp32"
    s = 4 if dtype == "fp32" else 2
    ckpt = bool(get("train.grad_checkpointing"))
    tokens = B * T
    h, I, L, V = m["h"], m["I"], m["L"], m["V"]
    q, kv = m["heads"] * m["hd"], m["kv"] * m["hd"]
    N = n_params(m)
    parts = []

    # Parameters and optimizer.
    if method == "lora":
        r, dropout = int(get("lora.r")), float(get("lora.dropout"))
        mods = [(n, i, o) for n, i, o in linear_shapes(m) if n in targets(get("lora.target_modules"))]
        n_lora = L * sum(r * (i + o) for _, i, o in mods)
        parts.append(("weights (frozen, %s)" % dtype, N * s))
        parts.append((f"LoRA {n_lora / 1e6:.1f}M params: fp32 + grads + AdamW (16 B each)", n_lora * 16))
        trainable = n_lora
    else:
        mods, r, dropout = [], 0, 0.0
        copy = 0 if s == 4 else s
        parts.append((f"full: {N / 1e6:.0f}M params, fp32 master + grad + AdamW (16 B)"
                      + (f" + {dtype} copy ({copy} B)" if copy else ""), N * (16 + copy)))
        trainable = N

    # Activations per token per layer (see the header).
    act = 2 * (4 * h + 4) + (2 * q + 2 * kv) * s + m["heads"] * 4 + 3 * I * s
    if method != "lora":  # trainable weights also keep their inputs: the norms' outputs, o's and down's
        act += 4 * h * s + q * s + I * s
    mask = 1 if device == "cuda" else 4
    for _, i, _ in mods:
        if dropout > 0:  # its dropout mask and its own dropped fp32 input, A's output
            act += i * (mask + 4) + 4 * r
        else:  # its own fp32 copy of the input (none when computing in fp32: the input itself), A's output
            act += (4 * i if s != 4 else 0) + 4 * r
    layer = act * tokens
    if attention == "dense":
        layer += B * m["heads"] * T * T * s + B * T * T
    if ckpt:
        parts.append((f"activations: {L} layer inputs (checkpointing) + 2 layers of {layer / GIB:.2f} GiB",
                      L * h * s * tokens + 2 * layer))
    else:
        parts.append((f"activations: {L}+1 layers of {layer / GIB:.2f} GiB", (L + 1) * layer))

    # Loss.
    chunk_rows = max(32, (64 << 20) // (4 * V))
    head = 2 * h * s * tokens
    chunked = min(chunk_rows, tokens) * V * 4 * 3 + 4 * h * tokens + head
    full_logits = tokens * V * 4 * 3 + head
    if unchunked:
        parts.append(("loss: unchunked, B*T*V fp32 x 3 + final norm", full_logits))
    else:
        parts.append((f"loss: chunked, {min(chunk_rows, tokens)} rows x {V} fp32 x 3 + fp32 grad of hidden + final norm",
                      chunked))
    total = sum(b for _, b in parts)
    other = total - parts[-1][1] + (chunked if unchunked else full_logits)
    return dict(preset=str(preset), model=cfg["model.path"], shape=m, method=method, dtype=dtype, B=B, T=T, r=r,
                ckpt=ckpt, packing=bool(get("data.packing")), params=N, trainable=trainable, parts=parts,
                total=total, gpu_total=total * 1.1 + 0.5 * GIB, other_loss_total=other)


def gpu_class(nbytes):
    for g in GPU_SIZES_GB:
        if nbytes <= g * GIB:
            return f"{g} GB"
    return f"more than {GPU_SIZES_GB[-1]} GB"


def report(e, device, unchunked):
    m = e["shape"]
    print(f"{e['preset']}: {e['model']} ({e['params'] / 1e6:.0f}M parameters; {m['L']} layers, hidden {m['h']}, "
          f"heads {m['heads']}/{m['kv']}, intermediate {m['I']}, vocab {m['V']}; from {m['source']})")
    print(f"  {e['method']}" + (f" r {e['r']}" if e["method"] == "lora" else "")
          + f", {e['dtype']}, micro-batch {e['B']} x {e['T']} tokens (packing {'on' if e['packing'] else 'off'}), "
          f"gradient checkpointing {'on' if e['ckpt'] else 'off'}")
    for name, b in e["parts"]:
        print(f"    {b / GIB:8.2f} GiB  {name}")
    print(f"    {e['total'] / GIB:8.2f} GiB  total tensors")
    if device == "cuda":
        print(f"    {e['gpu_total'] / GIB:8.2f} GiB  with CUDA context and allocator slack (+0.5 GiB, +10%): "
              f"a {gpu_class(e['gpu_total'])} GPU")
    alt = "chunked" if unchunked else "unchunked (B*T*V*4 x 3)"
    print(f"    ({alt} loss instead: {e['other_loss_total'] / GIB:.2f} GiB of tensors)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("presets", nargs="*", help="preset YAML files (default: every configs/*.yaml with a model)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="what dtype auto resolves to")
    ap.add_argument("--unchunked", action="store_true", help="the full-logits loss instead of the chunked one")
    ap.add_argument("--attention", default="flash", choices=["flash", "dense"],
                    help="flash: no T x T tensors (default); dense: SDPA's math kernel with a dense mask")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    presets = a.presets or [p for p in sorted((ROOT / "configs").glob("*.yaml"))
                            if "model" in (yaml.safe_load(p.read_text(encoding="utf-8")) or {})]
    out = [estimate(p, a.device, a.unchunked, a.attention) for p in presets]
    if a.json:
        print(json.dumps([{k: v for k, v in e.items() if k != "shape"} for e in out], indent=2, default=str))
        return
    for e in out:
        report(e, a.device, a.unchunked)


if __name__ == "__main__":
    sys.exit(main())
