"""Benchmark (not a test): LoRA fine-tuning throughput and peak memory of `llmtune finetune` next to
transformers + peft, packed and unpacked, same model directory, same data, same settings, same machine.

Usage: scripts/bench/finetune_bench.sh [--device cpu|cuda] [--shape demo|135m|1b|8b] [--steps N] ...
       (or: python scripts/bench/finetune_bench.py ..., which uses an existing build/llmtune)

Three runs, each a process of its own (so that its peak memory is its own), on the same examples:
  llmtune            `llmtune finetune --json`, packing on (examples packed whole into windows of
                     --seq-len tokens, kept apart inside a window), --batch-size windows a step.
  transformers packed  the examples of each llmtune step, packed the way transformers packs them:
                     `DataCollatorWithFlattening` concatenates them into ONE row of N tokens (N = the
                     step's real tokens) with `position_ids` restarting at 0 per example, no
                     attention_mask, the first label of each example -100. (--packed-layout rows keeps
                     llmtune's --batch-size rows instead, position_ids restarting per example.)
  transformers padded  the same examples unpacked: one example per row, right-padded to the step's
                     longest (`DataCollatorForSeq2Seq`), with an attention_mask.
Every step of every run sees the same examples, hence the same real tokens and the same targets:
the bench reproduces llmtune's seeded packing and epoch order (src/data/batcher.cpp: a seeded
permutation of the examples packed greedily into windows, then a seeded permutation of the windows per
epoch) and checks it after the run against llmtune's per-step token counts and step-1 loss (LoRA's B
starts at zero, so step 1's loss is the base model's on the step's examples, equal on every side).
Settings shared by all runs: the Alpaca rows of demo/data/train.jsonl rendered and tokenized as
llmtune does (its `alpaca` template: prompt, then response + EOS, no BOS; loss on the response
only), rows longer than --seq-len truncated; LoRA r/alpha/dropout on all linear layers but lm_head;
AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), constant learning rate, gradient clipping at 1.0,
no gradient accumulation.

What transformers (5.24, the version in ~/.cache/llmtune/venv) does with position_ids-only packing:
  - masking_utils._preprocess_mask_arguments looks for packing only when attention_mask is None AND no
    cache is passed; find_packed_sequence_indices then marks a new sequence wherever position_ids do not
    go up by one, and create_causal_mask ANDs causal with "same sequence".
  - With attn_implementation="sdpa" (the default) or "eager", that mask is materialised: sdpa_mask
    builds a dense (batch, 1, N, N) boolean tensor (for the flat row, (1, 1, N, N) over the whole step),
    SDPA is called with it and is_causal=False, and because a mask is present the GQA shortcut
    (enable_gqa) is not taken: K and V are expanded to every query head (repeat_kv). The work is a full
    N x N attention per head, the masked-out blocks included. On CPU, torch's flash kernel takes the
    mask (checked: ScaledDotProductFlashAttentionForCpu); on CUDA the flash kernel declines a mask and
    the memory-efficient kernel runs with it.
  - With attn_implementation="flash_attention_2" (the flash-attn package) the same position_ids give
    cu_seqlens (prepare_fa_kwargs_from_position_ids) and flash_attn_varlen_func: no mask, no N x N work.
    --attn-implementation selects it where that package is installed.
  - A trap: LlamaModel.forward creates a DynamicCache whenever use_cache is true, which is the config's
    default, in training too unless gradient checkpointing turns it off; with a cache present the
    packing detection is skipped and the examples of the row silently attend to each other. Trainer
    avoids it by setting config.use_cache = TrainingArguments.use_cache (False); this loop passes
    use_cache=False to every forward. (Checked on a small random Llama: with use_cache left at the
    default the packed logits differ from per-example ones by ~0.5; with use_cache=False by ~1e-7.
    In this bench the packed and padded runs give the same step-1 loss to 4 decimals.)

tokens/s counts the real (non-padding) tokens of the steps after the first, which is warm-up, for all
runs (llmtune's from its metrics.jsonl; its summary's figure includes step 1). Peak memory: peak RSS
of the process (getrusage; interpreter and libraries included for transformers) on CPU,
torch.cuda.max_memory_allocated / llmtune's own figure on CUDA. Each run is bounded: --steps
optimizer steps, and --run-timeout seconds at most (a run past it is reported as timed out).

Shapes (random weights, transformers' initialisation, seed 0):
  demo  the bundled demo model (demo/model; its weights when it has them), fp32, for CPU.
  135m  a 135M-class Llama (hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152,
        tied embeddings: SmolLM2-135M's shape, ~135M parameters), fp32 on CPU, bf16 on CUDA.
  1b    a 1B-class Llama (hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab 32000,
        ~1.1B parameters), bf16, for GPUs.
  8b    an 8B-class Llama (Llama-3-8B's shape: hidden 4096, 32 layers, 32 heads, 8 KV heads,
        intermediate 14336, vocab 128256, ~8.0B parameters), bf16, for GPUs (about 16 GB of weights;
        made on the GPU and written to a temporary directory, ~16 GB of disk).
The demo tokenizer encodes the text for every shape (its ids fit every vocabulary).

MFU (CUDA only) = 6 * N * tokens/s / peak bf16 FLOP/s, N = the parameters that take part in matrix
multiplies (every weight but the input embedding, LoRA's included); attention's own FLOPs are left
out (so the flat packed row's N x N attention is work MFU does not credit). 6N is the usual
full-training count (2N forward, 4N backward); LoRA skips the frozen weights' gradients, so its true
count is nearer 4N, and the 6N figure is comparable with what other tools (Unsloth, torchtune)
report. --peak-flops defaults to 989e12, an H100 SXM's dense bf16 peak (an H200's is the same).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LLMTUNE_BIN", ROOT / "build" / "llmtune"))
DEMO_MODEL = ROOT / "demo" / "model"
DEMO_DATA = ROOT / "demo" / "data" / "train.jsonl"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")

# The Alpaca layout, as llmtune's built-in `alpaca` chat template renders it (src/data/templates.cpp):
# preamble, instruction, optional input, then the response and the tokenizer's EOS; no BOS.
PREAMBLE = "Below is an instruction that describes a task{}. Write a response that appropriately completes the request."
WITH_INPUT = (PREAMBLE.format(", paired with an input that provides further context")
              + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
NO_INPUT = PREAMBLE.format("") + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"

_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # the demo tokenizer's
SHAPES = {
    "135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                 num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                 rope_theta=100000.0, tie_word_embeddings=True, **_IDS),
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False, **_IDS),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False, **_IDS),
}
# Per shape: batch size (windows a step), seq len, steps on CPU, steps on CUDA. The CPU defaults of
# 135m keep the three runs within ~10 minutes on 2 cores (model creation and loading included).
DEFAULTS = {"demo": (8, 256, 12, 30), "135m": (4, 256, 4, 30), "1b": (4, 2048, 6, 20), "8b": (4, 2048, 4, 12)}
VARIANTS = ("packed", "padded")


# ---- llmtune's data order, reproduced (src/data/batcher.cpp) -----------------------------------------

_M64 = (1 << 64) - 1


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class _MT19937_64:
    """std::mt19937_64, from the C++ standard's definition ([rand.eng.mers] parameters)."""
    N, M = 312, 156

    def __init__(self, seed):
        mt = [seed & _M64]
        for i in range(1, self.N):
            mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + i) & _M64)
        self.mt, self.i = mt, self.N

    def __call__(self):
        if self.i >= self.N:
            mt = self.mt
            for k in range(self.N):
                y = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % self.N] & 0x7FFFFFFF)
                mt[k] = mt[(k + self.M) % self.N] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
            self.i = 0
        y = self.mt[self.i]
        self.i += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        return (y ^ (y >> 43)) & _M64


def _uniform_upto(rng, bound):
    if bound == 0:
        return 0
    r = bound + 1
    limit = _M64 - (_M64 % r + 1) % r
    while True:
        x = rng()
        if x <= limit:
            return x % r


def seeded_permutation(n, seed, stream):
    p = list(range(n))
    rng = _MT19937_64(_splitmix64(seed ^ _splitmix64(stream)))
    for i in range(n - 1, 0, -1):
        j = _uniform_upto(rng, i)
        p[i], p[j] = p[j], p[i]
    return p


def llmtune_steps(lengths, seq_len, batch_size, steps, seed):
    """The windows (lists of example indices) of each of the first `steps` steps, as llmtune's Batcher
    with packing and shuffling on gives them (no gradient accumulation)."""
    windows, used = [], 0
    for idx in seeded_permutation(len(lengths), seed, 0x7061636B):  # "pack"
        if not windows or used + lengths[idx] > seq_len:
            windows.append([])
            used = 0
        windows[-1].append(idx)
        used += lengths[idx]
    per_epoch = (len(windows) + batch_size - 1) // batch_size
    out, orders = [], {}
    for step in range(steps):
        epoch, batch = divmod(step, per_epoch)
        if epoch not in orders:
            orders[epoch] = seeded_permutation(len(windows), seed, epoch)
        order = orders[epoch]
        out.append([windows[r] for r in order[batch * batch_size:(batch + 1) * batch_size]])
    return out


# ---- model and data ----------------------------------------------------------------------------------

def make_model(shape, out, device, dtype_name):
    """A model directory for the run: demo/model (random weights if it has none yet) or a SHAPES one."""
    import torch
    import transformers as tf
    out.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        shutil.copy(DEMO_MODEL / f, out / f)
    if shape == "demo" and (DEMO_MODEL / "model.safetensors").exists():
        for f in ("config.json", "model.safetensors"):
            shutil.copy(DEMO_MODEL / f, out / f)
        return
    tf.utils.logging.disable_progress_bar()
    config = tf.AutoConfig.from_pretrained(str(DEMO_MODEL)) if shape == "demo" else tf.LlamaConfig(**SHAPES[shape])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    torch.manual_seed(0)
    with torch.device(device if shape in ("1b", "8b") else "cpu"):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(str(out))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def encode_rows(tok, path, seq_len):
    """Per Alpaca row, token ids and labels as llmtune's data loading makes them (src/data/render.cpp,
    dataset.cpp): the rendered text encoded whole without added special tokens; a token is a target
    when its offset lies in the response (from the end of the prompt to the end of the EOS, trailing
    whitespace excluded); truncated to seq_len; a row left with no target is dropped."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            prompt = (WITH_INPUT if row.get("input") else NO_INPUT).format(instruction=row["instruction"],
                                                                           input=row.get("input", ""))
            text = prompt + row["output"] + tok.eos_token
            end = len(text.rstrip(" \n\t\r"))
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"][:seq_len]
            labels = [t if len(prompt) <= b < end else -100 for t, (b, _) in zip(ids, enc["offset_mapping"])]
            if any(l != -100 for l in labels):
                rows.append((ids, labels))
    return rows


def make_plan(a, model_dir, path):
    """Encodes the data and fixes every step's examples; written to `path` for the workers."""
    import transformers as tf
    tok = tf.AutoTokenizer.from_pretrained(str(model_dir))
    rows = encode_rows(tok, a.data, a.seq_len)
    steps = llmtune_steps([len(ids) for ids, _ in rows], a.seq_len, a.batch_size, a.steps, a.seed)
    plan = {"examples": rows, "steps": steps, "pad_id": tok.pad_token_id or 0,
            "step_tokens": [sum(len(rows[i][0]) for w in s for i in w) for s in steps]}
    path.write_text(json.dumps(plan), encoding="utf-8")
    return plan


# ---- transformers + peft -----------------------------------------------------------------------------

def build_batches(variant, layout, plan, tok):
    """Per step, the forward's keyword arguments (CPU tensors) for the variant."""
    import torch
    import transformers as tf
    ex, pad = plan["examples"], plan["pad_id"]
    out = []
    for windows in plan["steps"]:
        feats = [{"input_ids": ex[i][0], "labels": ex[i][1]} for w in windows for i in w]
        if variant == "padded":
            for f in feats:
                f["attention_mask"] = [1] * len(f["input_ids"])
            b = tf.DataCollatorForSeq2Seq(tok, padding="longest", label_pad_token_id=-100, return_tensors="pt")(feats)
            out.append({k: b[k] for k in ("input_ids", "attention_mask", "labels")})
        elif layout == "flat":
            b = tf.DataCollatorWithFlattening(return_tensors="pt")(feats)
            out.append({k: b[k] for k in ("input_ids", "position_ids", "labels")})
        else:  # rows: one row per llmtune window, padded to the step's longest (the padding its own segment)
            rows = []
            for w in windows:
                ids, labels, pos = [], [], []
                for i in w:
                    ids += ex[i][0]
                    labels += [-100] + ex[i][1][1:]
                    pos += list(range(len(ex[i][0])))
                rows.append((ids, labels, pos))
            T = max(len(r[0]) for r in rows)
            out.append({"input_ids": torch.tensor([r[0] + [pad] * (T - len(r[0])) for r in rows]),
                        "labels": torch.tensor([r[1] + [-100] * (T - len(r[1])) for r in rows]),
                        "position_ids": torch.tensor([r[2] + list(range(T - len(r[2]))) for r in rows])})
    return out


def hf_worker(a):
    """transformers + peft, one variant, in this (child) process; prints one JSON line."""
    import resource
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    tok = tf.AutoTokenizer.from_pretrained(a.model)
    plan = json.loads(Path(a.plan).read_text(encoding="utf-8"))
    batches = build_batches(a.hf_worker, a.packed_layout, plan, tok)
    shape = list(batches[0]["input_ids"].shape)
    del plan["examples"]

    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype,
                                                    attn_implementation=a.attn_implementation).to(device)
    if a.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    embed = model.get_input_embeddings().weight.numel()
    n_matmul = sum(p.numel() for p in model.parameters()) - embed
    if model.config.tie_word_embeddings:
        n_matmul += embed  # the tied lm_head is a matmul with the same weights
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    losses, t_start, tokens = [], None, 0
    for step, batch in enumerate(batches):
        kwargs = {k: v.to(device) for k, v in batch.items()}
        loss = model(**kwargs, use_cache=False).loss  # use_cache=False: see the header (packing is lost otherwise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronizes
        if step == 0:
            sync()
            t_start = time.perf_counter()
        else:
            tokens += plan["step_tokens"][step]  # real tokens, not padding (as llmtune's tokens_seen)
    sync()
    seconds = time.perf_counter() - t_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"tokens_per_second": tokens / seconds, "peak_memory_bytes": peak, "losses": losses,
                      "n_params": sum(p.numel() for p in model.parameters()), "n_matmul_params": n_matmul,
                      "n_trainable": sum(p.numel() for p in trainable), "threads": torch.get_num_threads(),
                      "timed_tokens": tokens, "seconds": seconds, "first_batch_shape": shape,
                      "attn_implementation": model.config._attn_implementation}))


def run_child(cmd, timeout, what):
    """Runs cmd; returns (CompletedProcess, None) or (None, why it gave no result)."""
    try:
        proc = subprocess.run([str(x) for x in cmd], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s (--run-timeout)"
    if proc.returncode != 0:
        print(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None, f"failed (exit {proc.returncode}; its stderr is above)"
    return proc, None


def run_hf(a, variant, model_dir, plan_path):
    args = [sys.executable, __file__, "--hf-worker", variant, "--model", model_dir, "--plan", plan_path,
            "--device", a.device, "--dtype", a.dtype, "--r", a.r, "--alpha", a.alpha, "--dropout", a.dropout,
            "--lr", a.lr, "--seed", a.seed, "--packed-layout", a.packed_layout,
            "--attn-implementation", a.attn_implementation]
    if a.grad_checkpointing:
        args.append("--grad-checkpointing")
    proc, why = run_child(args, a.run_timeout, f"transformers ({variant})")
    return (json.loads(proc.stdout.strip().splitlines()[-1]), None) if proc else (None, why)


# ---- llmtune -----------------------------------------------------------------------------------------

def llmtune_has_finetune():
    if not BIN.exists():
        return f"{BIN} is missing (scripts/build.sh builds it)"
    proc = subprocess.run([str(BIN), "finetune", "--help"], capture_output=True, text=True)
    return None if proc.returncode == 0 else "this build of llmtune has no `finetune` command yet"


def run_llmtune(a, model_dir, out_dir):
    """`llmtune finetune` with the same settings; returns its summary, with tokens/s over steps 2.."""
    overrides = {
        "model.path": model_dir, "output": out_dir, "method": "lora", "lora.r": a.r, "lora.alpha": f"{a.alpha:g}",
        "lora.dropout": a.dropout, "lora.target_modules": "all-linear", "data.path": a.data,
        "data.format": "alpaca", "data.template": "alpaca", "data.train_on": "assistant",
        "data.max_seq_len": a.seq_len, "data.packing": "true", "train.batch_size": a.batch_size,
        "train.grad_accum_steps": 1, "train.max_steps": a.steps, "train.lr": a.lr, "train.lr_scheduler": "constant",
        "train.warmup_steps": 0, "train.weight_decay": 0.0, "train.max_grad_norm": 1.0,
        "train.grad_checkpointing": str(a.grad_checkpointing).lower(), "eval.every_steps": 0,
        "checkpoint.every_steps": 0, "log.every_steps": 1, "seed": a.seed,
    }
    cmd = [BIN, "finetune", *[f"{k}={v}" for k, v in overrides.items()], "--device", a.device,
           "--dtype", a.dtype, "--json", "--log-level", "warn"]
    proc, why = run_child(cmd, a.run_timeout, "llmtune finetune")
    if not proc:
        return None, why
    summary = json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))
    steps = [json.loads(l) for l in (Path(out_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
             if l.strip()]
    steps = [m for m in steps if "tokens" in m]
    timed = steps[1:]
    seconds = sum(m["tokens"] / m["tokens_per_second"] for m in timed)
    summary["step_tokens"] = [m["tokens"] for m in steps]
    summary["losses"] = [m["loss"] for m in steps]
    summary["timed_tokens"] = sum(m["tokens"] for m in timed)
    summary["tokens_per_second"] = summary["timed_tokens"] / seconds if seconds > 0 else 0.0
    return summary, None


# ---- report ------------------------------------------------------------------------------------------

def gib(n):
    return f"{n / 2**30:.2f} GiB" if n and n > 0 else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="demo", choices=["demo", *SHAPES])
    ap.add_argument("--dtype", default=None, help="default: bf16 on CUDA and for 1b/8b, else fp32")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps per run, the first untimed (defaults: demo 12, 135m 4, 1b 6, 8b 4 on CPU; "
                         "30, 30, 20, 12 on CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="windows per step (default 8 demo, 4 otherwise)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per window (default 256 demo/135m, 2048 1b/8b)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--reference", default="packed,padded",
                    help="transformers variants to run: packed, padded, both (comma-separated) or none")
    ap.add_argument("--packed-layout", default="flat", choices=["flat", "rows"],
                    help="packed reference: flat = one row per step (DataCollatorWithFlattening), "
                         "rows = --batch-size rows, position_ids restarting per example")
    ap.add_argument("--attn-implementation", default="sdpa",
                    help="transformers' attention (sdpa, eager, flash_attention_2 where flash-attn is installed)")
    ap.add_argument("--peak-flops", type=float, default=989e12, help="peak bf16 FLOP/s for MFU (H100/H200 SXM: 989e12)")
    ap.add_argument("--run-timeout", type=int, default=900, help="seconds each run may take at most (default 900)")
    ap.add_argument("--skip-llmtune", action="store_true", help="time transformers + peft only")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (model, runs) and print it")
    ap.add_argument("--hf-worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=str(DEMO_DATA), help="Alpaca JSONL (default demo/data/train.jsonl)")
    a = ap.parse_args()
    if a.hf_worker:
        return hf_worker(a)

    cuda = a.device == "cuda"
    batch, seq, steps_cpu, steps_cuda = DEFAULTS[a.shape]
    a.dtype = a.dtype or ("bf16" if cuda or a.shape in ("1b", "8b") else "fp32")
    a.steps = a.steps or (steps_cuda if cuda else steps_cpu)
    a.batch_size = a.batch_size or batch
    a.seq_len = a.seq_len or seq
    variants = [] if a.reference == "none" else [v.strip() for v in a.reference.split(",") if v.strip()]
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"--reference: expected a list of {', '.join(VARIANTS)} or none, got {a.reference!r}")
    if a.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is warm-up and not timed)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-ftbench-"))
    try:
        t0 = time.perf_counter()
        model_dir = work / "model"
        make_model(a.shape, model_dir, a.device, a.dtype)
        plan = make_plan(a, model_dir, work / "plan.json")
        made = time.perf_counter() - t0
        results, why = {}, {}
        for v in variants:
            t = time.perf_counter()
            results[v], why[v] = run_hf(a, v, model_dir, work / "plan.json")
            print(f"[bench] transformers {v}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        why["llmtune"] = "skipped (--skip-llmtune)" if a.skip_llmtune else llmtune_has_finetune()
        results["llmtune"] = None
        if why["llmtune"] is None:
            t = time.perf_counter()
            results["llmtune"], why["llmtune"] = run_llmtune(a, model_dir, work / "run")
            print(f"[bench] llmtune: {time.perf_counter() - t:.0f} s", file=sys.stderr)
        report(a, plan, results, why, variants, made, time.perf_counter() - t0)
        if a.keep:
            print(f"work directory: {work}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(a, plan, results, why, variants, made, total):
    cuda = a.device == "cuda"
    ours = results.get("llmtune")
    any_hf = next((results[v] for v in variants if results.get(v)), None)
    n_examples = sum(len(w) for s in plan["steps"] for w in s)
    timed = sum(plan["step_tokens"][1:])
    if any_hf:
        print(f"model: Llama ({a.shape}), {any_hf['n_params'] / 1e6:.1f}M parameters incl. LoRA "
              f"({any_hf['n_trainable'] / 1e6:.2f}M trainable: r {a.r}, alpha {a.alpha:g}, all-linear), {a.dtype}, "
              f"device {a.device}, torch threads {any_hf['threads']}, transformers attention "
              f"{any_hf['attn_implementation']}")
    else:
        print(f"model: Llama ({a.shape}), LoRA r {a.r}, alpha {a.alpha:g}, all-linear, {a.dtype}, device {a.device}")
    print(f"run: {a.steps} steps x {a.batch_size} windows x {a.seq_len} tokens, {n_examples} examples, "
          f"{sum(plan['step_tokens'])} real tokens ({timed} timed, steps 2..{a.steps}), llmtune's packing order "
          f"(seed {a.seed}); AdamW lr {a.lr:g}, grad checkpointing {'on' if a.grad_checkpointing else 'off'}")
    for v in variants:
        if results.get(v):
            shp = "x".join(str(d) for d in results[v]["first_batch_shape"])
            desc = {"packed": ("one row per step, position_ids restart per example, no attention_mask"
                               if a.packed_layout == "flat" else
                               f"{a.batch_size} rows per step, position_ids restart per example, no attention_mask"),
                    "padded": "one example per row, padded to the step's longest, attention_mask"}[v]
            print(f"transformers {v}: {desc} (step 1: input_ids {shp})")

    cols = [("llmtune", ours)] + [(f"hf {v}", results.get(v)) for v in variants]
    mem_name = "peak CUDA memory allocated" if cuda else "peak RSS"
    rows = [("train tokens/s", lambda s: f"{s['tokens_per_second']:.1f}", "tokens_per_second"),
            (mem_name, lambda s: gib(s.get("peak_memory_bytes")), "peak_memory_bytes")]
    if cuda and any_hf:
        n = any_hf["n_matmul_params"]
        rows.append(("MFU (6N, bf16 peak)", lambda s: f"{100 * 6 * n * s['tokens_per_second'] / a.peak_flops:.1f}%",
                     None))
    rows.append(("loss, step 1", lambda s: f"{s['losses'][0]:.4f}", None))
    rows.append((f"loss, step {a.steps}", lambda s: f"{s['losses'][-1]:.4f}", None))
    head = f"{'':<28}" + "".join(f"{name:>14}" for name, _ in cols)
    head += "".join(f"{'llmtune/' + v:>17}" for v in variants)
    print(head)
    for name, fmt, key in rows:
        line = f"{name:<28}" + "".join(f"{fmt(s) if s else 'n/a':>14}" for _, s in cols)
        for v in variants:
            ratio = ""
            ref = results.get(v)
            if key and ours and ref and ours.get(key) and ours[key] > 0 and ref.get(key):
                ratio = f"{ours[key] / ref[key]:.2f}"
            line += f"{ratio:>17}"
        print(line)
    for name, s in cols:
        if not s:
            print(f"{name}: {why.get(name.replace('hf ', ''), 'n/a')}")
    if ours:
        same_tokens = ours["step_tokens"] == plan["step_tokens"]
        ref_loss = next((results[v]["losses"][0] for v in variants if results.get(v)), None)
        if not same_tokens:
            print(f"WARNING: llmtune's per-step tokens {ours['step_tokens']} differ from the plan's "
                  f"{plan['step_tokens']}: its data order or encoding is not the one reproduced here, "
                  "so the runs did not see the same examples")
        elif ref_loss is not None and abs(ours["losses"][0] - ref_loss) > 1e-2 * max(1.0, abs(ref_loss)):
            print(f"WARNING: step-1 losses differ (llmtune {ours['losses'][0]:.4f}, transformers {ref_loss:.4f}) "
                  "although the token counts agree: check the encoding")
        else:
            print("same examples on every side: llmtune's per-step token counts equal the plan's"
                  + (", step-1 losses agree" if ref_loss is not None else ""))
    if cuda and any_hf:
        print(f"MFU = 6 * {any_hf['n_matmul_params'] / 1e6:.0f}M (weights in matmuls, not the input embedding) * "
              f"tokens/s / {a.peak_flops:.3g} FLOP/s; attention FLOPs not counted")
    elif not cuda:
        print("peak RSS: the whole process (interpreter and libraries included for transformers)")
    print(f"wall time: {total:.0f} s in all ({made:.0f} s making the model and the plan)")


if __name__ == "__main__":
    main()
