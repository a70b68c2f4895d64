"""Benchmark (not a test): `llmtune eval` tokens/s and `llmtune infer` decode tokens/s next to
transformers on the same ~110M-parameter Llama model, same machine, same run.

Usage: scripts/bench/model_bench.sh  (or: python scripts/bench/model_bench.py [--device cpu|cuda])
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import transformers as tf

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LLMTUNE_BIN", ROOT / "build" / "llmtune"))
TOKENIZER = ROOT / "build" / "fixtures" / "tokenizers" / "bpe-llama3"


def make_model(out):
    config = tf.LlamaConfig(vocab_size=16384, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                            num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                            bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    for f in TOKENIZER.iterdir():
        if f.name != "generation_config.json":
            shutil.copy(f, out / f.name)
    return sum(p.numel() for p in model.parameters())


def run(*args):
    proc = subprocess.run([str(BIN), *map(str, args), "--json", "--log-level", "warn"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"llmtune {' '.join(map(str, args))} failed: {proc.stderr}")
    return json.loads(proc.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    a = ap.parse_args()
    if not TOKENIZER.exists():
        raise SystemExit(f"{TOKENIZER} is missing: build first (scripts/build.sh builds the fixtures)")
    work = Path(tempfile.mkdtemp(prefix="llmtune-bench-"))
    try:
        n_params = make_model(work / "model")
        text = (ROOT / "tests" / "data" / "corpus.txt").read_text(encoding="utf-8")
        (work / "eval.txt").write_text(text, encoding="utf-8")
        tok = tf.AutoTokenizer.from_pretrained(str(work / "model"))
        ids = tok(text)["input_ids"]
        n_windows = max(1, min(16, len(ids) // a.seq_len))
        ids = ids[: n_windows * a.seq_len]
        (work / "eval.txt").write_text(tok.decode(ids, skip_special_tokens=True), encoding="utf-8")

        # llmtune
        ours_eval = run("eval", "--model", work / "model", "--data", work / "eval.txt", "--max-seq-len", a.seq_len,
                        "--batch-size", 4, "--device", a.device, "--dtype", "fp32")
        prompt = tok.decode(ids[:32], skip_special_tokens=True)
        ours_infer = run("infer", "--model", work / "model", "--prompt", prompt, "--raw", "--max-new-tokens",
                         a.new_tokens, "--device", a.device, "--dtype", "fp32")

        # transformers, same model, same windows, same thread count
        model = tf.AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32).to(a.device).eval()
        windows = [ids[i:i + a.seq_len] for i in range(0, len(ids), a.seq_len)]
        windows = [w for w in windows if len(w) > 1]
        t0 = time.perf_counter()
        scored = 0
        with torch.no_grad():
            for i in range(0, len(windows), 4):
                batch = torch.tensor(windows[i:i + 4], device=a.device)
                model(input_ids=batch, labels=batch)
                scored += batch.numel() - batch.shape[0]
        hf_eval_tps = scored / (time.perf_counter() - t0)
        p = tok(prompt, return_tensors="pt")["input_ids"].to(a.device)
        with torch.no_grad():
            t0 = time.perf_counter()
            model(input_ids=p)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(input_ids=p, attention_mask=torch.ones_like(p), do_sample=False,
                           max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, pad_token_id=0)
            total = time.perf_counter() - t0
        hf_decode_tps = (a.new_tokens - 1) / max(total - prefill, 1e-9)

        print(f"model: Llama, {n_params / 1e6:.0f}M parameters, fp32, device {a.device}, torch threads {torch.get_num_threads()}")
        print(f"{'':<28}{'llmtune':>12}{'transformers':>14}{'ratio':>8}")
        print(f"{'eval tokens/s':<28}{ours_eval['tokens_per_second']:>12.1f}{hf_eval_tps:>14.1f}"
              f"{ours_eval['tokens_per_second'] / hf_eval_tps:>8.2f}")
        print(f"{'infer decode tokens/s':<28}{ours_infer['generation_tokens_per_second']:>12.1f}{hf_decode_tps:>14.1f}"
              f"{ours_infer['generation_tokens_per_second'] / hf_decode_tps:>8.2f}")
        print(f"(eval: {ours_eval['tokens']} tokens in windows of {a.seq_len}; infer: {a.new_tokens} new tokens, greedy)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
