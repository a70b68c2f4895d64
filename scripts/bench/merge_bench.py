"""Benchmark (not a test): wall time and peak memory of merging a LoRA adapter into its base and
writing the result, `llmtune merge` next to transformers + peft (PeftModel.from_pretrained →
merge_and_unload → save_pretrained), same model, same adapter, same machine, same run; then the
GGUF exports (`llmtune merge --gguf`, one per type asked for), which the reference stack cannot do
without llama.cpp's converter.

Usage: scripts/bench/merge_bench.sh [--shape 1b|demo] [--gguf-types q8_0,q4_k_m] [--keep]

Shapes: 1b, a random-weights Llama of 1B-class shape (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocab 32000, ~1.1B parameters) in bf16; demo, the bundled demo model. The
adapter is LoRA r 16 / alpha 32 on every linear layer but lm_head, with random A and B, saved by
PEFT. Each side runs in a child process of its own; peak memory is the child's peak RSS (getrusage
RUSAGE_CHILDREN), which counts the memory-mapped base pages it touched. Output dtype: the base's (bf16).
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

from measured_run import measured_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_bench import BIN, make_model  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(model_dir, out, r, alpha):
    import peft
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    pm.save_pretrained(str(out))


def hf_worker(a):
    import peft
    import torch
    import transformers as tf

    t0 = time.perf_counter()
    model = tf.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16)
    merged = peft.PeftModel.from_pretrained(model, a.adapter).merge_and_unload()
    merged.save_pretrained(a.output)
    tf.AutoTokenizer.from_pretrained(a.model).save_pretrained(a.output)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="1b", choices=["1b", "demo"])
    ap.add_argument("--gguf-types", default="q8_0,q4_k_m", help="comma-separated GGUF types to export (empty: none)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--adapter", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hf_worker:
        return hf_worker(a)
    if not BIN.exists():
        raise SystemExit(f"{BIN} is missing (scripts/build.sh builds it)")

    work = Path(tempfile.mkdtemp(prefix="llmtune-merge-bench-"))
    try:
        # Model and adapter are made in child processes; each measured command runs under a fresh
        # wrapper process whose RUSAGE_CHILDREN then covers that command alone.
        model_dir, adapter_dir = work / "model", work / "adapter"
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); from finetune_bench import make_model; "
                        "from pathlib import Path; make_model(%r, Path(%r), 'cpu')" % (str(Path(__file__).parent), a.shape,
                                                                                       str(model_dir))], check=True)
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); from merge_bench import make_adapter; "
                        "make_adapter(%r, %r, %d, %f)" % (str(Path(__file__).parent), str(model_dir), str(adapter_dir),
                                                          a.r, a.alpha)], check=True)
        n_bytes = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
        print(f"model: {a.shape} shape, {n_bytes / 1e9:.2f} GB of bf16 weights; adapter: LoRA r {a.r} on {len(TARGETS)} "
              f"module types", flush=True)

        rows = []

        def measure(label, cmd):
            res = measured_run(cmd, label)
            rows.append((label, res["wall"], res["rss"]))
            print(f"  {label:<44} {res['wall']:8.1f} s   peak RSS {gib(res['rss'])}", flush=True)

        measure("transformers + peft merge_and_unload + save",
                [sys.executable, __file__, "--hf-worker", "--model", model_dir, "--adapter", adapter_dir,
                 "--output", work / "hf-merged"])
        measure("llmtune merge (HF directory)",
                [BIN, "merge", "--model", model_dir, "--adapter", adapter_dir, "--output", work / "llmtune-merged",
                 "--log-level", "warn"])
        for t in filter(None, a.gguf_types.split(",")):
            measure(f"llmtune merge --gguf (GGUF {t} only)",
                    [BIN, "merge", "--model", model_dir, "--adapter", adapter_dir, "--gguf", work / f"merged-{t}.gguf",
                     "--gguf-type", t, "--log-level", "warn"])
            size = (work / f"merged-{t}.gguf").stat().st_size
            print(f"    {t}: {size / 1e9:.2f} GB", flush=True)
        ref = rows[0]
        ours = rows[1]
        print(f"\nllmtune merge vs transformers + peft: {ref[1] / ours[1]:.2f}x faster, "
              f"{ours[2] / ref[2]:.2f}x the peak memory")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
