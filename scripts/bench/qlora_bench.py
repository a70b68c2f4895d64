"""Benchmark (not a test): QLoRA on CPU, `llmtune finetune model.quantize=nf4` next to transformers + peft +
bitsandbytes, same random-weights model, same examples, same settings, one run; and the peak memory of loading an
8B-shaped base in 4 bits next to transformers loading it with BitsAndBytesConfig.

Usage: scripts/bench/qlora_bench.sh [--shapes 135m,1b] [--steps N] [--load-layers L | --skip-load] ...

Training (per shape, each run a process of its own, so that its peak memory is its own):
  llmtune       `llmtune finetune --json` with model.quantize=nf4 model.double_quant=true (blocksize 64),
                LoRA r/alpha/dropout on all linear layers but lm_head, fp32 compute, packing on.
  transformers  AutoModelForCausalLM.from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit, nf4,
                double quant, compute dtype float32)), peft LoRA with the same settings (target_modules
                all-linear), the examples of each llmtune step packed the way transformers packs them
                (DataCollatorWithFlattening, as finetune_bench.py does), torch AdamW, clipping at 1.0.
The examples, llmtune's packing order and the tokens/s accounting (real tokens of steps 2.., the first step
is warm-up) are finetune_bench.py's; see its header. The checkpoint is written in bf16, so the 4-bit bases
quantize the same values on both sides.

Peak memory: peak RSS of the process (ru_maxrss; interpreter and libraries included for transformers), read
the same way for both: each run is started by a small Python launcher that reports its child's.

Loading (--load-layers L): a checkpoint of Llama-3-8B's shape (hidden 4096, 32 heads / 8 KV heads,
intermediate 14336, vocab 128256, untied lm_head) with L decoder layers (default 8; 32 is the whole 8B:
16 GB of bf16 on disk and more memory than a 24 GB machine shared with other work can lend the reference),
random bf16 weights written shard by shard. Peak RSS of `llmtune infer --quantize nf4` (load, one token) and
of transformers' from_pretrained with BitsAndBytesConfig(nf4, double quant) on the CPU. The per-layer figure
(peak minus the fixed part, over L) extrapolates to 32 layers: fixed + 32 x per layer, where fixed is the
embeddings and lm_head (kept dense on both sides) and the process itself; it is estimated by loading twice,
with L and L/2 layers.

Shapes: 135m = SmolLM2-135M's (hidden 576, 30 layers, 9 / 3 heads, intermediate 1536, vocab 49152, tied);
1b = TinyLlama-1.1B's (hidden 2048, 22 layers, 32 / 4 heads, intermediate 5632, vocab 32000).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_bench as fb  # noqa: E402  (shares the data plan, packing and batches)

_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # the demo tokenizer's
SHAPES = {
    "135m": fb.SHAPES["135m"],
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
               rope_theta=10000.0, tie_word_embeddings=False, **_IDS),
}
LOAD_SHAPE = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                  tie_word_embeddings=False, **_IDS)
# Per shape: batch size (windows a step), seq len, steps. Sized for 2 CPU cores.
DEFAULTS = {"135m": (4, 256, 5), "1b": (2, 256, 3)}

# Runs a command and prints its peak RSS (KiB) on the last line of stderr: one launcher per measured
# process, so that RUSAGE_CHILDREN holds that process alone.
LAUNCHER = ("import resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")


def measured(cmd, timeout, what):
    """Runs cmd under the launcher; returns (stdout, peak RSS bytes, seconds) or (None, why, None)."""
    t0 = time.perf_counter()
    proc, why = fb.run_child([sys.executable, "-c", LAUNCHER, *cmd], timeout, what)
    if not proc:
        return None, why, None
    peak = next(int(l.split()[1]) * 1024 for l in reversed(proc.stderr.splitlines()) if l.startswith("PEAK_RSS_KIB"))
    return proc.stdout, peak, time.perf_counter() - t0


def write_llama(config_kwargs, out):
    """A random-weights Llama directory (bf16), written tensor by tensor: never the whole model in memory."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file
    out.mkdir(parents=True)
    for f in fb.TOKENIZER_FILES:
        shutil.copy(fb.DEMO_MODEL / f, out / f)
    config = tf.LlamaConfig(**config_kwargs)
    config.dtype = "bfloat16"
    config.save_pretrained(str(out))
    h, i, v, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    index = {}

    def shard(name, tensors):
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        index.update({k: name for k in tensors})

    shard("model-embed.safetensors", {"model.embed_tokens.weight": rnd(v, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)})
    for l in range(L):
        p = f"model.layers.{l}."
        shard(f"model-layer{l:03d}.safetensors", {
            p + "self_attn.q_proj.weight": rnd(h, h), p + "self_attn.k_proj.weight": rnd(kv, h),
            p + "self_attn.v_proj.weight": rnd(kv, h), p + "self_attn.o_proj.weight": rnd(h, h),
            p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
            p + "mlp.down_proj.weight": rnd(h, i),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16)})
    if not config.tie_word_embeddings:
        shard("model-head.safetensors", {"lm_head.weight": rnd(v, h)})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))


def bnb_config():
    import torch
    import transformers as tf
    return tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.float32)


def hf_worker(a):
    """transformers + peft + bitsandbytes QLoRA, in this (child) process; prints one JSON line."""
    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(a.seed)
    tok = tf.AutoTokenizer.from_pretrained(a.model)
    plan = json.loads(Path(a.plan).read_text(encoding="utf-8"))
    batches = fb.build_batches("packed", "flat", plan, tok)
    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, quantization_config=bnb_config(),
                                                    device_map="cpu")
    model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, t_start, tokens = [], None, 0
    for step, batch in enumerate(batches):
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step == 0:
            t_start = time.perf_counter()
        else:
            tokens += plan["step_tokens"][step]
    seconds = time.perf_counter() - t_start
    print(json.dumps({"tokens_per_second": tokens / seconds, "losses": losses, "threads": torch.get_num_threads(),
                      "n_trainable": sum(p.numel() for p in trainable)}))


def hf_load_worker(a):
    """transformers loading a 16-bit checkpoint in 4 bits on the CPU."""
    import torch
    import transformers as tf
    t0 = time.perf_counter()
    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, quantization_config=bnb_config(),
                                                    device_map="cpu")
    print(json.dumps({"seconds": time.perf_counter() - t0, "footprint": model.get_memory_footprint()}))


def run_hf_train(a, model_dir, plan_path):
    cmd = [sys.executable, __file__, "--hf-worker", "train", "--model", model_dir, "--plan", plan_path, "--r", a.r,
           "--alpha", a.alpha, "--dropout", a.dropout, "--lr", a.lr, "--seed", a.seed]
    out, peak, _ = measured([str(c) for c in cmd], a.run_timeout, "transformers + bitsandbytes")
    if out is None:
        return None, peak
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss"] = peak
    return res, None


def run_llmtune_train(a, model_dir, out_dir):
    overrides = {
        "model.path": model_dir, "output": out_dir, "method": "lora", "model.quantize": "nf4",
        "model.double_quant": "true", "model.quant_blocksize": 64, "lora.r": a.r, "lora.alpha": f"{a.alpha:g}",
        "lora.dropout": a.dropout, "lora.target_modules": "all-linear", "data.path": a.data, "data.format": "alpaca",
        "data.template": "alpaca", "data.train_on": "assistant", "data.max_seq_len": a.seq_len,
        "data.packing": "true", "train.batch_size": a.batch_size, "train.grad_accum_steps": 1,
        "train.max_steps": a.steps, "train.lr": a.lr, "train.lr_scheduler": "constant", "train.warmup_steps": 0,
        "train.weight_decay": 0.0, "train.max_grad_norm": 1.0, "train.grad_checkpointing": "false",
        "eval.every_steps": 0, "checkpoint.every_steps": 0, "log.every_steps": 1, "seed": a.seed,
    }
    cmd = [str(fb.BIN), "finetune", *[f"{k}={v}" for k, v in overrides.items()], "--device", "cpu", "--dtype", "fp32",
           "--json", "--log-level", "warn"]
    out, peak, _ = measured(cmd, a.run_timeout, "llmtune finetune (QLoRA)")
    if out is None:
        return None, peak
    steps = [json.loads(l) for l in (Path(out_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]
    steps = [m for m in steps if "tokens" in m]
    timed = steps[1:]
    seconds = sum(m["tokens"] / m["tokens_per_second"] for m in timed)
    tokens = sum(m["tokens"] for m in timed)
    return {"tokens_per_second": tokens / seconds if seconds > 0 else 0.0, "losses": [m["loss"] for m in steps],
            "step_tokens": [m["tokens"] for m in steps], "peak_rss": peak}, None


def run_load(a, model_dir):
    """Peak RSS of loading model_dir in 4 bits: llmtune (infer, one token) and transformers."""
    cmd = [str(fb.BIN), "infer", "--model", str(model_dir), "--quantize", "nf4", "--prompt", "Hi", "--max-new-tokens",
           "1", "--device", "cpu", "--dtype", "bf16", "--log-level", "warn"]
    ours = measured(cmd, a.run_timeout, "llmtune infer --quantize nf4")
    ref = measured([sys.executable, __file__, "--hf-worker", "load", "--model", str(model_dir)], a.run_timeout,
                   "transformers from_pretrained(BitsAndBytesConfig)")
    return ours, ref


def gib(n):
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) and n > 0 else "n/a"


def ratio(x, y):
    return f"{x / y:.2f}" if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y > 0 else "n/a"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="135m,1b", help="training shapes, comma-separated (135m, 1b) or none")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run, the first untimed")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--load-layers", type=int, default=8, help="decoder layers of the 8B-shaped load check (32: all)")
    ap.add_argument("--skip-load", action="store_true", help="no 8B-shaped load check")
    ap.add_argument("--run-timeout", type=int, default=1800)
    ap.add_argument("--data", default=str(fb.DEMO_DATA))
    ap.add_argument("--hf-worker", choices=["train", "load"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hf_worker == "train":
        return hf_worker(a)
    if a.hf_worker == "load":
        return hf_load_worker(a)
    why = fb.llmtune_has_finetune()
    if why:
        raise SystemExit(why)
    shapes = [] if a.shapes == "none" else [s.strip() for s in a.shapes.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="llmtune-qlorabench-"))
    t0 = time.perf_counter()
    try:
        print(f"QLoRA on CPU: nf4, double quant, blocksize 64, fp32 compute, LoRA r {a.r} alpha {a.alpha:g} "
              f"dropout {a.dropout} on all linear layers; AdamW lr {a.lr:g}; torch threads {os.cpu_count()} cores")
        print(f"{'':<34}{'llmtune':>14}{'transformers':>14}{'llmtune/ref':>13}")
        for shape in shapes:
            batch, seq, steps = DEFAULTS[shape]
            s = argparse.Namespace(**vars(a))
            s.batch_size, s.seq_len, s.steps = a.batch_size or batch, a.seq_len or seq, a.steps or steps
            model_dir = work / shape
            write_llama(SHAPES[shape], model_dir)
            plan = fb.make_plan(s, model_dir, work / f"{shape}-plan.json")
            ref, ref_why = run_hf_train(s, model_dir, work / f"{shape}-plan.json")
            ours, our_why = run_llmtune_train(s, model_dir, work / f"{shape}-run")
            shutil.rmtree(model_dir, ignore_errors=True)
            print(f"[{shape}: {s.steps} steps x {s.batch_size} windows x {s.seq_len} tokens, "
                  f"{sum(plan['step_tokens'][1:])} timed tokens]")
            for name, key, fmt in (("  train tokens/s", "tokens_per_second", lambda v: f"{v:.1f}"),
                                   ("  peak RSS", "peak_rss", gib)):
                x, y = (ours or {}).get(key), (ref or {}).get(key)
                print(f"{name:<34}{fmt(x) if x else 'n/a':>14}{fmt(y) if y else 'n/a':>14}{ratio(x, y):>13}")
            if ours and ref:
                print(f"{'  loss, step 1 / last':<34}{ours['losses'][0]:>7.4f}/{ours['losses'][-1]:.4f}"
                      f"{ref['losses'][0]:>7.4f}/{ref['losses'][-1]:.4f}")
                if ours["step_tokens"] != plan["step_tokens"]:
                    print("  WARNING: llmtune's per-step tokens differ from the plan's: not the same examples")
            for name, why in (("llmtune", our_why), ("transformers", ref_why)):
                if why:
                    print(f"  {name}: {why}")
        if not a.skip_load:
            load_check(a, work)
        print(f"wall time: {time.perf_counter() - t0:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load_check(a, work):
    L = a.load_layers
    results = {}
    for layers in sorted({L, max(1, L // 2)}):
        d = work / f"load-{layers}"
        write_llama(dict(LOAD_SHAPE, num_hidden_layers=layers), d)
        results[layers] = run_load(a, d)
        shutil.rmtree(d, ignore_errors=True)
    print(f"[load in 4 bits: Llama-3-8B shape, {L} of 32 decoder layers, bf16 checkpoint of "
          f"{(L * 218.1e6 + 2 * 525.3e6) * 2 / 2**30:.1f} GiB]")
    (o_out, o_peak, o_s), (r_out, r_peak, r_s) = results[L]
    print(f"{'  peak RSS':<34}{gib(o_peak):>14}{gib(r_peak):>14}{ratio(o_peak, r_peak):>13}")
    print(f"{'  seconds':<34}{o_s or 0:>14.1f}{r_s or 0:>14.1f}")
    peaks = [results[k][j][1] for k in results for j in (0, 1)]
    if len(results) == 2 and all(isinstance(p, int) for p in peaks):
        half = min(results)
        per_o = (o_peak - results[half][0][1]) / (L - half)
        per_r = (r_peak - results[half][1][1]) / (L - half)
        full_o, full_r = o_peak + (32 - L) * per_o, r_peak + (32 - L) * per_r
        print(f"{'  peak RSS per decoder layer':<34}{per_o / 2**20:>10.0f} MiB{per_r / 2**20:>10.0f} MiB"
              f"{ratio(per_o, per_r):>13}")
        print(f"{'  extrapolated to 32 layers (8B)':<34}{gib(full_o):>14}{gib(full_r):>14}{ratio(full_o, full_r):>13}")
        print("  (a decoder layer of this shape: 218M weights, 416 MiB in bf16, ~117 MiB in NF4 + absmax)")
    for name, peak in (("llmtune", o_peak), ("transformers", r_peak)):
        if not isinstance(peak, int):
            print(f"  {name}: {peak}")


if __name__ == "__main__":
    main()
