"""Benchmark (not a test): `llmtune serve` next to llama.cpp's server (llama-cpp-python[server]) serving
the same GGUF file on the same machine in the same run: requests/s, generated tokens/s and time to first
token (p50 / p99) with 1, 8 and 32 concurrent streaming clients.

Usage: scripts/bench/serve_bench.sh [--shape demo|135m|both] [--type q4_1] [--requests N] [--max-tokens N]
           [--clients 1,8,32] [--concurrency 8] [--threads N] [--no-llamacpp] [--keep]
       (LLAMACPP_PYTHON: a Python with llama-cpp-python[server]; default ~/.cache/llmtune/bench-venv/bin/python,
       which scripts/bench/setup-llamacpp.sh builds: llama-cpp-python ships only an sdist, ~10 minutes on 2 cores.)

Models: `demo` is the bundled demo model (demo/model); `135m` is a random-weights model shaped like
SmolLM-135M (hidden 576, 30 layers, 9 / 3 heads, intermediate 1536, vocab 49152, tied), written by
qlora_bench.write_llama with the demo tokenizer padded to 49152 entries. Each is exported once with
`llmtune quantize --type TYPE` and both servers load that one file.

Requests: --requests completions per client count, each a different prompt (demo sentences), streamed
(`stream: true`), greedy, exactly --max-tokens generated tokens each (llmtune: `ignore_eos`; llama.cpp:
`min_tokens`; the counts are checked once through each server's `usage`). A request's time to first token
runs from sending it to the first chunk with text; requests/s and tokens/s are over the whole load
(first request sent to last byte received). Both servers get the same threads (--threads, default all
cores); llmtune batches up to --concurrency requests, llama-cpp-python's server decodes one at a time (started with `--interrupt_requests False`: by default a new
request cuts the running stream short). Every stream must end with finish_reason "length".
Before the load, one greedy request to each server shows how many leading tokens of the two outputs agree
(llama.cpp computes in its quantized dot products, llmtune in fp32 on dequantized weights, so they may
part after some tokens).
"""
import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_bench as fb  # noqa: E402  (BIN, DEMO_MODEL, DEMO_DATA)
from distill_bench import STUDENT, pad_tokenizer  # noqa: E402
from qlora_bench import write_llama  # noqa: E402

LLAMACPP_PYTHON = Path(os.environ.get("LLAMACPP_PYTHON", Path.home() / ".cache/llmtune/bench-venv/bin/python"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


class Server:
    """One server process on a free loopback port, up once GET /v1/models answers."""

    def __init__(self, name, cmd, port, log):
        self.name, self.port, self.log = name, port, log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{name} did not come up in 600 s:\n{log.read_text()[-3000:]}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def body_for(server, prompt, max_tokens, stream):
    b = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if server == "llmtune":
        b["ignore_eos"] = True
        if stream:
            b["stream_options"] = {"include_usage": True}
    else:
        b["min_tokens"] = max_tokens
    return b


def one_streamed(server, port, prompt, max_tokens):
    """Sends one streamed completion; returns (time to first text chunk, end time, start time). Exits
    unless the stream ended with finish_reason "length" after max_tokens tokens (llmtune's usage chunk;
    llama-cpp-python streams one chunk per token)."""
    start = time.perf_counter()
    conn, res = post(port, body_for(server, prompt, max_tokens, True))
    if res.status != 200:
        raise SystemExit(f"{server}: HTTP {res.status}: {res.read()[:500]!r}")
    first, reason, tokens, pieces = None, None, None, 0
    for line in res:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if not chunk.get("choices"):
            continue
        c = chunk["choices"][0]
        reason = c.get("finish_reason") or reason
        if c.get("text"):
            pieces += 1
            if first is None:
                first = time.perf_counter() - start
    conn.close()
    tokens = pieces if tokens is None else tokens
    if reason != "length" or (server == "llmtune" and tokens != max_tokens) or tokens > max_tokens:
        raise SystemExit(f"{server}: a stream ended with finish_reason {reason!r} after {tokens} tokens, "
                         f"not 'length' after {max_tokens}")
    return first, time.perf_counter(), start


def load(server, port, prompts, clients, max_tokens):
    """`clients` threads take the prompts from one list in turn; returns the run's figures."""
    ttft, lock, next_i = [], threading.Lock(), [0]
    ends, starts = [], []

    def worker():
        while True:
            with lock:
                if next_i[0] >= len(prompts):
                    return
                p = prompts[next_i[0]]
                next_i[0] += 1
            first, end, start = one_streamed(server, port, p, max_tokens)
            with lock:
                ttft.append(first)
                ends.append(end)
                starts.append(start)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(ends) - min(starts)
    q = statistics.quantiles(ttft, n=100, method="inclusive")
    return {"requests_s": len(prompts) / wall, "tokens_s": len(prompts) * max_tokens / wall,
            "ttft_p50_ms": 1000 * q[49], "ttft_p99_ms": 1000 * q[98], "wall_s": wall}


def greedy_ids(server, port, tokenizer_port, prompt, max_tokens):
    """One non-streamed greedy completion: its text's ids (through llmtune's /tokenize) and usage."""
    conn, res = post(port, body_for(server, prompt, max_tokens, False))
    out = json.loads(res.read())
    conn.close()
    if "choices" not in out:
        raise SystemExit(f"{server}: {out}")
    conn = http.client.HTTPConnection("127.0.0.1", tokenizer_port, timeout=60)
    conn.request("POST", "/tokenize", json.dumps({"prompt": out["choices"][0]["text"], "add_special_tokens": False}))
    ids = json.loads(conn.getresponse().read())["tokens"]
    return ids, out["usage"]["completion_tokens"]


def prompts_from_demo(n):
    rows = [json.loads(l) for l in fb.DEMO_DATA.read_text().splitlines() if l.strip()]
    texts = [(r.get("instruction") or r.get("text") or "") + " " + (r.get("output") or "") for r in rows]
    return [t[:160] for t in texts[:n]]


def bench_model(a, label, model_dir, work):
    gguf = work / f"{label}.{a.type}.gguf"
    r = subprocess.run([str(fb.BIN), "quantize", "--model", str(model_dir), "--type", a.type, "--output", str(gguf),
                        "--force"], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"llmtune quantize failed:\n{r.stderr[-3000:]}")
    prompts = prompts_from_demo(a.requests)
    env_threads = str(a.threads)
    os.environ["OMP_NUM_THREADS"] = env_threads
    servers = {}
    port = free_port()
    servers["llmtune"] = Server("llmtune serve", [str(fb.BIN), "serve", "--model", str(gguf), "--model-name", "m",
                                                  "--port", str(port), "--max-concurrency", str(a.concurrency),
                                                  "--max-queue", "1024", "--log-level", "warn"],
                                port, work / f"{label}-llmtune.log")
    results = {}
    try:
        if not a.no_llamacpp:
            port = free_port()
            servers["llama.cpp"] = Server("llama-cpp-python server", [
                str(LLAMACPP_PYTHON), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "m",
                "--host", "127.0.0.1", "--port", str(port), "--n_threads", env_threads, "--n_threads_batch",
                env_threads, "--n_ctx", "2048", "--verbose", "False",
                "--interrupt_requests", "False"], port, work / f"{label}-llamacpp.log")
        tok_port = servers["llmtune"].port
        ids = {}
        for name, s in servers.items():
            ids[name], used = greedy_ids(name, s.port, tok_port, prompts[0], a.max_tokens)
            if used != a.max_tokens:
                raise SystemExit(f"{name} generated {used} tokens, not {a.max_tokens}")
        if len(ids) == 2:
            x, y = ids["llmtune"], ids["llama.cpp"]
            agree = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            print(f"  {label}: greedy outputs agree on their first {agree} of {a.max_tokens} tokens")
        for clients in a.clients:
            for name, s in servers.items():
                one_streamed(name, s.port, prompts[0], 4)  # warm
                results[(name, clients)] = load(name, s.port, prompts, clients, a.max_tokens)
                r = results[(name, clients)]
                print(f"  {label} {name:9s} {clients:2d} clients: {r['requests_s']:6.2f} req/s {r['tokens_s']:8.1f} tok/s "
                      f"ttft p50 {r['ttft_p50_ms']:7.0f} ms p99 {r['ttft_p99_ms']:7.0f} ms", flush=True)
    finally:
        for s in servers.values():
            s.stop()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["demo", "135m", "both"], default="both")
    ap.add_argument("--type", default="q4_1", help="GGUF type both servers load [q4_1]")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--concurrency", type=int, default=8, help="llmtune serve --max-concurrency [8]")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-llamacpp", action="store_true", help="llmtune only")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.clients = [int(c) for c in a.clients.split(",")]
    if not a.no_llamacpp and not LLAMACPP_PYTHON.exists():
        raise SystemExit(f"{LLAMACPP_PYTHON} not found: run scripts/bench/setup-llamacpp.sh (or set LLAMACPP_PYTHON, "
                         "or pass --no-llamacpp)")
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    try:
        models = []
        if a.shape in ("demo", "both"):
            models.append(("demo", fb.DEMO_MODEL))
        if a.shape in ("135m", "both"):
            d = work / "smollm-135m-shape"
            write_llama(STUDENT, d)
            pad_tokenizer(d, STUDENT["vocab_size"])
            models.append(("135m", d))
        print(f"serve benchmark on CPU ({a.threads} threads), GGUF {a.type}, {a.requests} streamed completions x "
              f"{a.max_tokens} tokens per load, llmtune --max-concurrency {a.concurrency}", flush=True)
        table = {}
        for label, d in models:
            table[label] = bench_model(a, label, d, work)
        print("\n| model | clients | server | requests/s | tokens/s | TTFT p50 | TTFT p99 |")
        print("|---|---|---|---|---|---|---|")
        for label, res in table.items():
            for (name, clients), r in res.items():
                print(f"| {label} | {clients} | {name} | {r['requests_s']:.2f} | {r['tokens_s']:.1f} | "
                      f"{r['ttft_p50_ms']:.0f} ms | {r['ttft_p99_ms']:.0f} ms |")
    finally:
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
