"""`llmtune serve` over the model kinds llmtune loads, on the bundled demo model with a LoRA adapter
trained by `llmtune finetune`: a greedy chat reply from the server equals `llmtune infer` with the same
model and adapter token for token (the base + adapter over one base, a GGUF file with the adapter
folded in, a base quantized to NF4 while it loads), and the server's memory does not grow over
repeated loads of concurrent requests."""
import concurrent.futures
import json
import subprocess
from pathlib import Path

import pytest

from conftest import BIN
from test_serve import request, stop_server

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "model"
PROMPTS = ["What is the opposite of hot?", "Name a color.", "Write one sentence about the sea."]
MAX_TOKENS = 24


def run(*args):
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def start(model, *args):
    proc = subprocess.Popen([str(BIN), "serve", "--model", model, "--model-name", "base", "--port", "0", "--json", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline()
    if not line:
        raise AssertionError("the server did not start: " + proc.stderr.read())
    return proc, json.loads(line)["port"]


def chat(port, model, prompt):
    status, body = request(port, "POST", "/v1/chat/completions", {
        "model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": MAX_TOKENS}, key=None)
    assert status == 200, body
    return body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]


def infer(model, prompt, *args):
    out = json.loads(run("infer", "--model", model, "--prompt", prompt, "--max-new-tokens", MAX_TOKENS, "--json", *args))
    return out["completion"], out["generated_tokens"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo-lora"
    run("finetune", ROOT / "configs" / "demo-lora.yaml", f"model.path={DEMO}", f"data.path={ROOT / 'demo/data/train.jsonl'}",
        "data.val_path=", f"output={out}", "train.max_steps=12", "train.warmup_steps=2", "train.batch_size=4",
        "checkpoint.every_steps=0", "eval.every_steps=0", "--json")
    return out / "adapter"


@pytest.mark.parametrize("kind", ["adapter", "gguf", "nf4"])
def test_greedy_replies_equal_llmtune_infer(adapter, tmp_path, kind):
    if kind == "adapter":
        model, served, serve_args, infer_args = DEMO, "tuned", ["--adapter", f"tuned={adapter}"], ["--adapter", adapter]
    elif kind == "gguf":
        model = tmp_path / "demo-tuned.gguf"
        run("quantize", "--model", DEMO, "--adapter", adapter, "--type", "f32", "--output", model)
        served, serve_args, infer_args = "base", [], []
    else:
        model, served, serve_args, infer_args = DEMO, "tuned", ["--adapter", f"tuned={adapter}", "--quantize", "nf4"], \
            ["--adapter", adapter, "--quantize", "nf4"]
    proc, port = start(model, *serve_args)
    try:
        got = [chat(port, served, p) for p in PROMPTS]
    finally:
        code, err = stop_server(proc)
    assert code == 0, err
    want = [infer(model, p, *infer_args) for p in PROMPTS]
    assert got == want
    if kind == "adapter":  # the adapter is what answers: the base alone says something else
        proc, port = start(model, *serve_args)
        try:
            assert [chat(port, "base", p) for p in PROMPTS] != got
        finally:
            stop_server(proc)


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_does_not_grow_over_repeated_loads(adapter):
    """Three loads of 32 concurrent requests: the resident memory after the third is within 10 % (and
    32 MiB) of what it was after the first, when the allocator has seen a full batch."""
    proc, port = start(DEMO, "--adapter", f"tuned={adapter}", "--max-concurrency", 8)
    try:
        def load():
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda i: chat(port, "tuned" if i % 2 else "base", PROMPTS[i % 3]), range(32)))
            assert all(n > 0 for _, n in replies)

        load()
        after_first = rss_bytes(proc.pid)
        load()
        load()
        after_third = rss_bytes(proc.pid)
    finally:
        code, err = stop_server(proc)
    assert code == 0, err
    assert after_third <= after_first * 1.10 + (32 << 20), (after_first, after_third)
