"""Benchmark (not a test): LoRA fine-tuning throughput and peak memory of `llmtune finetune` next to
transformers + peft, same model directory, same data, same settings, same machine, same run.

Usage: scripts/bench/finetune_bench.sh [--device cpu|cuda] [--shape demo|1b] [--steps N] ...
       (or: python scripts/bench/finetune_bench.py ..., which uses an existing build/llmtune)

Both sides train the same thing: the Alpaca rows of demo/data/train.jsonl rendered with the Alpaca
template (BOS + prompt, then response + EOS, loss on the response only), rows packed whole into
windows of --seq-len tokens as llmtune packs them, --batch-size windows a step; LoRA r/alpha/dropout
on all linear layers but lm_head; AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), constant
learning rate, gradient clipping at 1.0. transformers runs in a child process of its own, so its
peak memory is its own: peak RSS (getrusage) on CPU, torch.cuda.max_memory_allocated on CUDA.
tokens/s counts the real (non-padding) tokens of every window, as llmtune's summary does, over the
steps after the first, which is warm-up. transformers attends causally across the rows of a window
(llmtune keeps them apart with a block-diagonal mask); the matmul work is the same.

Shapes: demo, the bundled demo model (demo/model; random weights when it has none yet), fp32 on
CPU; 1b, a random-weights Llama of 1B-class shape (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocab 32000, ~1.1B parameters) in bf16, for GPUs.

MFU (CUDA only) = 6 * N * tokens/s / peak bf16 FLOP/s, N = the parameters that take part in matrix
multiplies (every weight but the input embedding, LoRA's included); attention's own FLOPs are left
out. 6N is the usual full-training count (2N forward, 4N backward); LoRA skips the frozen weights'
gradients, so its true count is nearer 4N, and the 6N figure is comparable with what other tools
(Unsloth, torchtune) report. --peak-flops defaults to 989e12, an H100 SXM's dense bf16 peak.
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

# The Alpaca layout, as `data.template: alpaca` renders it (scripts/demo/make_demo.py writes the same).
PREAMBLE = "Below is an instruction that describes a task{}. Write a response that appropriately completes the request.\n\n"
WITH_INPUT = (PREAMBLE.format(", paired with an input that provides further context")
              + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
NO_INPUT = PREAMBLE.format("") + "### Instruction:\n{instruction}\n\n### Response:\n"

SHAPE_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5,
                rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def make_model(shape, out, device):
    """A model directory for the run: demo/model (random weights if it has none yet) or the 1B shape."""
    import torch
    import transformers as tf
    out.mkdir(parents=True)
    for f in TOKENIZER_FILES:
        shutil.copy(DEMO_MODEL / f, out / f)
    if shape == "demo" and (DEMO_MODEL / "model.safetensors").exists():
        for f in ("config.json", "model.safetensors"):
            shutil.copy(DEMO_MODEL / f, out / f)
        return
    config = tf.AutoConfig.from_pretrained(str(DEMO_MODEL)) if shape == "demo" else tf.LlamaConfig(**SHAPE_1B)
    dtype = torch.float32 if shape == "demo" else torch.bfloat16
    torch.manual_seed(0)
    with torch.device(device if shape == "1b" else "cpu"):
        model = tf.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(str(out))
    del model


def encode_rows(tok, path):
    """Per Alpaca row, token ids and labels: BOS + prompt (label -100), then response + EOS."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            prompt = (WITH_INPUT if row.get("input") else NO_INPUT).format(instruction=row["instruction"],
                                                                           input=row.get("input", ""))
            p = tok(prompt)["input_ids"]  # the tokenizer's post-processor adds BOS
            r = tok(row["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            rows.append((p + r, [-100] * len(p) + r))
    return rows


def pack_rows(rows, seq_len, pad_id):
    """Rows packed whole, in order, into windows of seq_len (as llmtune's packing does; a row longer
    than a window is truncated), the rest padded (label -100). Returns ids, labels, real tokens."""
    windows, cur_ids, cur_labels = [], [], []
    for ids, labels in rows:
        ids, labels = ids[:seq_len], labels[:seq_len]
        if len(cur_ids) + len(ids) > seq_len:
            windows.append((cur_ids, cur_labels))
            cur_ids, cur_labels = [], []
        cur_ids, cur_labels = cur_ids + ids, cur_labels + labels
    if cur_ids:
        windows.append((cur_ids, cur_labels))
    real = [len(w[0]) for w in windows]
    ids = [w[0] + [pad_id] * (seq_len - len(w[0])) for w in windows]
    labels = [w[1] + [-100] * (seq_len - len(w[1])) for w in windows]
    return ids, labels, real


def hf_worker(a):
    """transformers + peft, in this (child) process; prints one JSON line."""
    import resource
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(a.seed)
    device = torch.device(a.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    tok = tf.AutoTokenizer.from_pretrained(a.model)
    ids, labels, real = pack_rows(encode_rows(tok, a.data), a.seq_len, tok.pad_token_id or 0)
    n_windows = len(ids)
    ids, labels, real = torch.tensor(ids), torch.tensor(labels), torch.tensor(real)

    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(device)
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
    for step in range(a.steps):
        rows = [(step * a.batch_size + i) % n_windows for i in range(a.batch_size)]
        x, y = ids[rows].to(device), labels[rows].to(device)
        mask = (torch.arange(a.seq_len)[None, :] < real[rows][:, None]).long().to(device)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())  # synchronizes
        if step == 0:
            sync()
            t_start = time.perf_counter()
        else:
            tokens += int(real[rows].sum())  # real tokens, not padding (as llmtune's tokens_seen)
    sync()
    seconds = time.perf_counter() - t_start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"tokens_per_second": tokens / seconds, "peak_memory_bytes": peak, "losses": losses,
                      "n_params": sum(p.numel() for p in model.parameters()), "n_matmul_params": n_matmul,
                      "n_trainable": sum(p.numel() for p in trainable), "threads": torch.get_num_threads(),
                      "timed_steps": a.steps - 1, "seconds": seconds, "windows": n_windows}))


def run_hf(a, model_dir):
    args = [sys.executable, __file__, "--hf-worker", "--model", model_dir, "--data", a.data, "--device", a.device,
            "--dtype", a.dtype, "--steps", a.steps, "--batch-size", a.batch_size, "--seq-len", a.seq_len,
            "--r", a.r, "--alpha", a.alpha, "--dropout", a.dropout, "--lr", a.lr, "--seed", a.seed]
    if a.grad_checkpointing:
        args.append("--grad-checkpointing")
    proc = subprocess.run([str(x) for x in args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"transformers run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def llmtune_has_finetune():
    if not BIN.exists():
        return f"{BIN} is missing (scripts/build.sh builds it)"
    proc = subprocess.run([str(BIN), "finetune", "--help"], capture_output=True, text=True)
    return None if proc.returncode == 0 else "this build of llmtune has no `finetune` command yet"


def run_llmtune(a, model_dir, out_dir):
    """`llmtune finetune` with the same settings; returns its summary.json."""
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
    cmd = [str(BIN), "finetune", *[f"{k}={v}" for k, v in overrides.items()], "--device", a.device,
           "--dtype", a.dtype, "--json", "--log-level", "warn"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llmtune finetune failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads((Path(out_dir) / "summary.json").read_text(encoding="utf-8"))


def gib(n):
    return f"{n / 2**30:.2f} GiB" if n else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="demo", choices=["demo", "1b"])
    ap.add_argument("--dtype", default=None, help="default: fp32 for demo on CPU, bf16 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps, the first untimed (default 12 CPU, 30 CUDA)")
    ap.add_argument("--batch-size", type=int, default=None, help="windows per step (default 8 demo, 4 1b)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per window (default 256 demo, 2048 1b)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--peak-flops", type=float, default=989e12, help="peak bf16 FLOP/s for MFU (H100 SXM: 989e12)")
    ap.add_argument("--skip-llmtune", action="store_true", help="time transformers + peft only")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (model, run) and print it")
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--data", default=str(DEMO_DATA), help="Alpaca JSONL (default demo/data/train.jsonl)")
    a = ap.parse_args()
    if a.hf_worker:
        return hf_worker(a)

    cuda = a.device == "cuda"
    a.dtype = a.dtype or ("bf16" if cuda or a.shape == "1b" else "fp32")
    a.steps = a.steps or (30 if cuda else 12)
    a.batch_size = a.batch_size or (8 if a.shape == "demo" else 4)
    a.seq_len = a.seq_len or (256 if a.shape == "demo" else 2048)
    if a.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is warm-up and not timed)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-ftbench-"))
    try:
        model_dir = work / "model"
        make_model(a.shape, model_dir, a.device)
        hf = run_hf(a, model_dir)
        ours, why_not = None, "skipped (--skip-llmtune)" if a.skip_llmtune else llmtune_has_finetune()
        if why_not is None:
            ours = run_llmtune(a, model_dir, work / "run")

        print(f"model: Llama ({a.shape}), {hf['n_params'] / 1e6:.1f}M parameters incl. LoRA "
              f"({hf['n_trainable'] / 1e6:.2f}M trainable: r {a.r}, alpha {a.alpha:g}, all-linear), {a.dtype}, "
              f"device {a.device}, torch threads {hf['threads']}")
        print(f"run: {a.steps} steps x {a.batch_size} windows x {a.seq_len} tokens (Alpaca rows packed whole), AdamW lr {a.lr:g}, "
              f"grad checkpointing {'on' if a.grad_checkpointing else 'off'}; tokens/s over steps 2..{a.steps}")
        mem_name = "peak CUDA memory allocated" if cuda else "peak RSS"
        rows = [("train tokens/s", lambda s: f"{s['tokens_per_second']:.1f}"),
                (mem_name, lambda s: gib(s.get("peak_memory_bytes")))]
        if cuda:
            rows.append(("MFU (6N, bf16 peak)",
                         lambda s: f"{100 * 6 * hf['n_matmul_params'] * s['tokens_per_second'] / a.peak_flops:.1f}%"))
        print(f"{'':<30}{'llmtune':>14}{'transformers+peft':>20}{'ratio':>8}")
        for name, fmt in rows:
            ratio = ""
            if ours and name == "train tokens/s":
                ratio = f"{ours['tokens_per_second'] / hf['tokens_per_second']:.2f}"
            elif ours and name == mem_name and ours.get("peak_memory_bytes"):
                ratio = f"{ours['peak_memory_bytes'] / hf['peak_memory_bytes']:.2f}"
            print(f"{name:<30}{fmt(ours) if ours else 'n/a':>14}{fmt(hf):>20}{ratio:>8}")
        first, last = hf["losses"][0], hf["losses"][-1]
        print(f"transformers loss: step 1 {first:.3f}, step {a.steps} {last:.3f}"
              + (f"; llmtune final_loss {ours['final_loss']:.3f}" if ours and "final_loss" in ours else ""))
        if why_not:
            print(f"llmtune: {why_not}")
        if cuda:
            print(f"MFU = 6 * {hf['n_matmul_params'] / 1e6:.0f}M (weights in matmuls, not the input embedding) * tokens/s "
                  f"/ {a.peak_flops:.3g} FLOP/s; attention FLOPs not counted")
        else:
            print("peak RSS: the whole process (interpreter and libraries included for transformers)")
        if a.keep:
            print(f"work directory: {work}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
