"""Benchmark (not a test): wall time and peak memory of `llmtune prune --method wanda` and
`--method sparsegpt` at 50% on a random-weights model of TinyLlama-1.1B's shape (hidden 2048, 22
layers, 32 heads, 4 KV heads, intermediate 5632, vocab 32000; bf16 on disk) with N × T-token
calibration windows, on the CPU. Calibration text: demo/data/pretrain.jsonl (its tokenizer is the
demo model's; ids stay far below the vocabulary).

Usage: scripts/bench/prune_bench.sh [--samples 128] [--seq-len 512] [--methods wanda,sparsegpt]
                                    [--shape tinyllama|demo] [--dtype fp32|bf16] [--keep]

Each run is a child process under a fresh wrapper whose RUSAGE_CHILDREN peak RSS covers that run
alone. Expected: peak memory near the model's size in the compute dtype plus one layer's
activations for N × T tokens (and, for sparsegpt, one layer's Hessians).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measured_run import measured_run

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "build" / "llmtune"
DEMO = ROOT / "demo"
TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def make_model(shape, out):
    import torch
    import transformers as tf
    out.mkdir(parents=True)
    for f in DEMO.joinpath("model").iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(f, out / f.name)
    if shape == "demo":
        shutil.copy(DEMO / "model" / "config.json", out / "config.json")
        shutil.copy(DEMO / "model" / "model.safetensors", out / "model.safetensors")
        return
    tf.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(**TINYLLAMA), dtype=torch.bfloat16)
    model.save_pretrained(str(out))


def measure(cmd):
    return measured_run(cmd, str(cmd[1:4]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--shape", default="tinyllama", choices=["tinyllama", "demo"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="compute dtype")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not BIN.exists():
        raise SystemExit(f"{BIN} is missing (scripts/build.sh builds it)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-prune-bench-"))
    try:
        model = work / "model"
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); from prune_bench import make_model; "
                        "from pathlib import Path; make_model(%r, Path(%r))" % (str(Path(__file__).parent), a.shape, str(model))],
                       check=True)
        n_bytes = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        print(f"model: {a.shape} shape, {n_bytes / 1e9:.2f} GB on disk; calibration {a.samples} x {a.seq_len} tokens; "
              f"compute {a.dtype} on the CPU", flush=True)
        for method in filter(None, a.methods.split(",")):
            res = measure([BIN, "prune", "--model", model, "--output", work / method, "--method", method, "--sparsity", "0.5",
                           "--calibration", DEMO / "data" / "pretrain.jsonl", "--calibration-samples", a.samples,
                           "--seq-len", a.seq_len, "--device", "cpu", "--dtype", a.dtype, "--json", "--log-level", "warn"])
            report = json.loads(res["out"])
            print(f"  {method:<10} wall {res['wall']:8.1f} s (pruning {report['prune_seconds']:.1f} s)   "
                  f"peak RSS {res['rss'] / 2**30:.2f} GiB", flush=True)
            shutil.rmtree(work / method, ignore_errors=True)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
