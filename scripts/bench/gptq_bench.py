"""Benchmark (not a test): wall time and peak memory of `llmtune quantize --method gptq` (4 bits,
groups of 128) and `--method rtn` on a random-weights model of TinyLlama-1.1B's shape (prune_bench's
model) with N × T-token calibration windows on the CPU; and the held-out perplexity of the source,
RTN and GPTQ on the bundled demo model (the published ordering: source < GPTQ < RTN).

Usage: ~/.cache/llmtune/venv/bin/python scripts/bench/gptq_bench.py [--samples 128] [--seq-len 512]
                                    [--shape tinyllama|demo] [--skip-demo] [--keep]
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
CALIB = DEMO / "data" / "pretrain.jsonl"


def quantize(model, out, method, *extra):
    cmd = [BIN, "quantize", "--model", model, "--output", out, "--method", method, "--bits", 4, "--group-size", 128,
           *extra, "--json", "--log-level", "warn"]
    res = measured_run(cmd, f"quantize {method}")
    return res, json.loads(res["out"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--shape", default="tinyllama", choices=["tinyllama", "demo"])
    ap.add_argument("--skip-demo", action="store_true", help="skip the demo model's perplexity comparison")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if not BIN.exists():
        raise SystemExit(f"{BIN} is missing (scripts/build.sh builds it)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-gptq-bench-"))
    try:
        if not a.skip_demo:
            calib = ["--calibration", CALIB, "--calibration-samples", 128, "--seq-len", 256]
            held_out = ["--eval-data", DEMO / "data" / "pretrain_val.jsonl"]
            _, g = quantize(DEMO / "model", work / "demo-gptq", "gptq", *calib, *held_out)
            _, r = quantize(DEMO / "model", work / "demo-rtn", "rtn", *held_out)
            print(f"demo model, held-out perplexity (4 bits, g128; GPTQ on 128 x 256 calibration tokens): source "
                  f"{g['source_perplexity']:.4f}, GPTQ {g['quantized_perplexity']:.4f}, RTN {r['quantized_perplexity']:.4f}",
                  flush=True)
        model = work / "model"
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); from prune_bench import make_model; "
                        "from pathlib import Path; make_model(%r, Path(%r))" % (str(Path(__file__).parent), a.shape, str(model))],
                       check=True)
        n_bytes = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        print(f"model: {a.shape} shape, {n_bytes / 1e9:.2f} GB on disk (bf16), quantized in fp32 on the CPU; calibration "
              f"{a.samples} x {a.seq_len} tokens", flush=True)
        for method in ("rtn", "gptq"):
            extra = ["--calibration", CALIB, "--calibration-samples", a.samples, "--seq-len", a.seq_len] if method == "gptq" else []
            res, j = quantize(model, work / method, method, *extra)
            out_bytes = sum(f.stat().st_size for f in (work / method).glob("*.safetensors"))
            print(f"  {method:<5} wall {res['wall']:8.1f} s (quantizing {j['quantize_seconds']:.1f} s)   peak RSS "
                  f"{res['rss'] / 2**30:.2f} GiB   output {out_bytes / 1e9:.2f} GB", flush=True)
            shutil.rmtree(work / method, ignore_errors=True)
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
