"""`llmtune serve` end to end: the server on a free loopback port, driven by the official `openai`
client. Greedy completions and chat completions equal transformers' generate() (with PEFT for an
adapter) token for token; streams concatenate to the non-streamed text and end with a usage chunk and
[DONE]; bad requests get OpenAI-shaped errors with the right status; /metrics parses with
prometheus_client and counts exactly what was served; SIGTERM ends the server with exit 0."""
import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
FIXTURE = FIXTURES / "models" / "llama3"
BASE = None  # the module's copy of FIXTURE (model_copy), set by the server fixture
KEY = "sk-test-7f3a"
PROMPTS = ["The quick brown fox", "Once upon a time"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


# The fixture's Llama 3 template with a tools section as Llama 3.1's writes one (the fixture's own
# ignores tools): written as chat_template.jinja into a copy of the model, which both sides read.
TOOLS_TEMPLATE = (
    "{{- bos_token }}{%- if tools %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\nYou may call these functions:\\n' }}"
    "{%- for t in tools %}{{- t | tojson }}{{- '\\n' }}{%- endfor %}{{- '<|eot_id|>' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def model_copy(out):
    out.mkdir()
    for f in FIXTURE.iterdir():
        (out / f.name).symlink_to(f)
    (out / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    return out


def make_adapter(out):
    """A PEFT adapter with nonzero A and B (so it changes the outputs), saved by PEFT itself."""
    import peft
    import torch
    import transformers as tf

    torch.manual_seed(3)
    model = tf.AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                                    init_lora_weights=False, task_type="CAUSAL_LM"))
    pm.save_pretrained(out)
    return out


def start_server(*args):
    proc = subprocess.Popen([str(BIN), "serve", "--model", BASE or FIXTURE, "--model-name", "base", "--port", "0", "--json", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    line = proc.stdout.readline()
    if not line:
        raise AssertionError("the server did not start: " + proc.stderr.read())
    return proc, json.loads(line)["port"]


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    global BASE
    BASE = model_copy(tmp_path_factory.mktemp("model") / "llama3")
    adapter = make_adapter(tmp_path_factory.mktemp("adapter") / "tuned")
    proc, port = start_server("--adapter", f"tuned={adapter}", "--api-key", KEY, "--max-body-bytes", 4096,
                              "--max-tokens-limit", 64)
    yield {"port": port, "adapter": adapter, "proc": proc}
    code, err = stop_server(proc)
    assert code == 0, err


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key=KEY, max_retries=0)


def request(port, method, path, body=None, key=KEY, raw=None):
    """(status, parsed JSON or text) of one request, without the openai client."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    conn.request(method, path, body=data, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text)
    except json.JSONDecodeError:
        return resp.status, text


_references = {}


def reference(model_name, adapter, prompt_ids, max_new_tokens):
    """transformers' greedy generate() (PEFT for the adapter): the generated ids."""
    import torch
    import transformers as tf

    if model_name not in _references:
        model = tf.AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
        if model_name != "base":
            import peft

            model = peft.PeftModel.from_pretrained(model, adapter)
        _references[model_name] = model.eval()
    model = _references[model_name]
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def tok():
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(BASE)


def test_models_lists_the_base_and_each_adapter(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["base", "tuned"]
    status, body = request(server["port"], "GET", "/v1/models/tuned")
    assert status == 200 and body["id"] == "tuned" and body["parent"] == "base"


@pytest.mark.parametrize("model_name", ["base", "tuned"])
def test_greedy_completions_equal_transformers(client, server, tok, model_name):
    for prompt in PROMPTS:
        r = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0)
        want = reference(model_name, server["adapter"], tok(prompt)["input_ids"], 12)
        assert r.choices[0].text == tok.decode(want, skip_special_tokens=True), (model_name, prompt)
        assert r.usage.completion_tokens == len(want) and r.usage.prompt_tokens == len(tok(prompt)["input_ids"])
        assert r.choices[0].finish_reason == ("stop" if want[-1] == tok.eos_token_id or len(want) < 12 else "length")
    # The adapter changes the output (or the comparison above would not test the selection).
    a = client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=12, temperature=0).choices[0].text
    b = client.completions.create(model="tuned", prompt=PROMPTS[0], max_tokens=12, temperature=0).choices[0].text
    assert a != b


@pytest.mark.parametrize("model_name", ["base", "tuned"])
def test_greedy_chat_equals_transformers_and_tools_reach_the_template(client, server, tok, model_name):
    r = client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=10, temperature=0)
    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    want = reference(model_name, server["adapter"], prompt, 10)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == tok.decode(want, skip_special_tokens=True)
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == len(want)
    with_tools = tok.apply_chat_template(CHAT, tools=TOOLS, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
    assert len(with_tools) > len(prompt)
    r = client.chat.completions.create(model=model_name, messages=CHAT, tools=TOOLS, max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(with_tools)


@pytest.mark.parametrize("chat", [False, True])
def test_stream_concatenates_to_the_full_text_with_a_usage_chunk(client, server, chat):
    kw = dict(model="tuned", max_tokens=16, temperature=0)
    if chat:
        full = client.chat.completions.create(messages=CHAT, **kw)
        chunks = list(client.chat.completions.create(messages=CHAT, stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        want = full.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        full = client.completions.create(prompt=PROMPTS[1], **kw)
        chunks = list(client.completions.create(prompt=PROMPTS[1], stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        want = full.choices[0].text
    assert text == want and len([c for c in chunks if c.choices]) > 2
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == full.choices[0].finish_reason and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # On the wire: server-sent events, ending with data: [DONE].
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": "tuned", "max_tokens": 4, "temperature": 0, "stream": True}
    body.update({"messages": CHAT} if chat else {"prompt": PROMPTS[1]})
    status, raw = request(server["port"], "POST", path, body)
    events = [e for e in raw.split("\n\n") if e]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_strings_end_the_text_before_them(client, tok, server):
    full = client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=12, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert stop.strip(), full
    r = client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=12, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text


def test_seeded_sampling_repeats(client):
    kw = dict(model="base", prompt=PROMPTS[0], max_tokens=10, temperature=1.0, top_p=0.9, extra_body={"top_k": 50})
    first = client.completions.create(seed=11, **kw).choices[0].text
    assert client.completions.create(seed=11, **kw).choices[0].text == first
    assert {client.completions.create(seed=s, **kw).choices[0].text for s in (12, 13)} != {first}


def test_n_choices(client):
    kw = dict(model="tuned", prompt=PROMPTS[0], max_tokens=6, temperature=0)
    one = client.completions.create(**kw)
    two = client.completions.create(n=2, **kw)
    assert [c.text for c in two.choices] == [one.choices[0].text] * 2 and [c.index for c in two.choices] == [0, 1]
    assert two.usage.completion_tokens == 2 * one.usage.completion_tokens
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    chunks = list(client.completions.create(n=2, stream=True, stream_options={"include_usage": True}, **kw))
    for i in (0, 1):
        assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) == one.choices[0].text
    assert chunks[-1].usage.completion_tokens == two.usage.completion_tokens
    # Sampled choices differ (each has its own seed, seed + index).
    sampled = client.completions.create(n=3, seed=5, temperature=1.0, model="base", prompt=PROMPTS[1], max_tokens=8)
    assert len({c.text for c in sampled.choices}) > 1


def test_api_key_and_open_endpoints(server):
    import openai

    port = server["port"]
    for key in (None, "wrong"):
        status, body = request(port, "POST", "/v1/completions", {"model": "base", "prompt": "hi"}, key=key)
        assert status == 401 and body["error"]["type"] == "authentication_error", body
        assert request(port, "GET", "/v1/models", key=key)[0] == 401
        assert request(port, "POST", "/tokenize", {"prompt": "hi"}, key=key)[0] == 401
    assert request(port, "GET", "/health", key=None) == (200, {"status": "ok"})
    assert request(port, "GET", "/metrics", key=None)[0] == 200
    bad = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


BAD_REQUESTS = [
    ("/v1/completions", '{"model": "base", "prompt": ', 400, None),
    ("/v1/completions", '[1, 2]', 400, None),
    ("/v1/completions", {"model": "base", "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": "base", "prompt": 7}, 400, "prompt"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 65}, 400, "max_tokens"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "stop": [1, 2]}, 400, "stop"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "stop": [""]}, 400, "stop"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "n": 0}, 400, "n"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "n": 1000}, 400, "n"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "logprobs": -1, "stream": True}, 400, "logprobs"),
    ("/v1/chat/completions", {"model": "base", "messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"model": "base", "messages": CHAT, "tools": TOOLS, "tool_choice": "required"}, 400, "tool_choice"),
    ("/v1/completions", {"model": "base", "prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "hi"}, 400, "model"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"model": "base", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("/v1/nothing", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, path, body, status, param):
    raw = body if isinstance(body, str) else None
    got, resp = request(server["port"], "POST", path, None if raw else body, raw=raw)
    assert got == status, resp
    assert set(resp) == {"error"} and set(resp["error"]) == {"message", "type", "param", "code"}, resp
    assert resp["error"]["param"] == param and resp["error"]["message"], resp
    assert request(server["port"], "POST", "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2})[0] == 200


def test_body_over_the_limit_is_413(server, client):
    import openai

    status, resp = request(server["port"], "POST", "/v1/completions", {"model": "base", "prompt": "x" * 5000})
    assert status == 413 and resp["error"]["code"] == "request_too_large", resp
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"


def test_tokenize_and_detokenize_equal_the_tokenizer(server, tok):
    status, body = request(server["port"], "POST", "/tokenize", {"prompt": "Hello world"})
    assert status == 200 and body["tokens"] == tok("Hello world")["input_ids"] and body["count"] == len(body["tokens"])
    status, body = request(server["port"], "POST", "/tokenize", {"model": "base", "messages": CHAT})
    assert body["tokens"] == tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)["input_ids"]
    ids = tok("Hello world", add_special_tokens=False)["input_ids"]
    assert request(server["port"], "POST", "/detokenize", {"tokens": ids}) == (200, {"prompt": tok.decode(ids)})


def scrape(port):
    from prometheus_client.parser import text_string_to_metric_families

    status, text = request(port, "GET", "/metrics", key=None)
    assert status == 200
    types = [l.split()[2] for l in text.splitlines() if l.startswith("# TYPE")]
    assert len(types) == len(set(types)), "one TYPE line per family"
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


def test_metrics_count_exactly_what_was_served(client, server):
    port = server["port"]
    before, _ = scrape(port)
    tokens = 0
    for i in range(3):
        tokens += client.completions.create(model="tuned", prompt=PROMPTS[0], max_tokens=5 + i, temperature=0).usage.completion_tokens
    tokens += sum(c.usage.completion_tokens for c in client.completions.create(
        model="tuned", prompt=PROMPTS[1], max_tokens=7, temperature=0, stream=True, stream_options={"include_usage": True})
        if c.usage)
    request(port, "POST", "/v1/completions", {"model": "tuned", "prompt": "hi", "n": 0})
    after, text = scrape(port)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("llmtune_requests_total", endpoint="/v1/completions", status="200") == 4
    assert delta("llmtune_requests_total", endpoint="/v1/completions", status="400") == 1
    assert delta("llmtune_generation_tokens_total", model="tuned") == tokens
    assert delta("llmtune_request_latency_seconds_count", model="tuned") == 4
    assert after[("llmtune_requests_running", ())] == 0 and after[("llmtune_requests_waiting", ())] == 0
    # Histograms: cumulative buckets, the last one +Inf and equal to _count.
    for name in ("llmtune_time_to_first_token_seconds", "llmtune_inter_token_latency_seconds",
                 "llmtune_request_latency_seconds"):
        buckets = [(dict(k[1]), v) for k, v in after.items() if k[0] == name + "_bucket" and dict(k[1])["model"] == "tuned"]
        counts = [v for _, v in sorted(buckets, key=lambda b: float(b[0]["le"]))]
        assert counts == sorted(counts) and buckets and max(buckets, key=lambda b: float(b[0]["le"]))[0]["le"] == "+Inf"
        assert counts[-1] == after[(name + "_count", (("model", "tuned"),))]


def test_sigterm_mid_stream_finishes_the_stream_and_exits_0(tmp_path):
    proc, port = start_server("--max-tokens-limit", 200)
    got = {}

    def stream():
        got["result"] = request(port, "POST", "/v1/completions",
                                {"model": "base", "prompt": PROMPTS[0], "max_tokens": 200, "temperature": 0,
                                 "stream": True, "ignore_eos": True}, key=None)

    t = threading.Thread(target=stream)
    t.start()
    while request(port, "GET", "/metrics", key=None)[1].count("llmtune_requests_running 1") == 0 and t.is_alive():
        pass
    code, err = stop_server(proc)
    t.join(timeout=30)
    assert code == 0, err
    status, raw = got["result"]
    assert status == 200 and raw.rstrip().endswith("data: [DONE]"), raw[-200:]
    assert "SIGTERM" in err


def test_a_full_queue_answers_429_and_the_rest_complete():
    proc, port = start_server("--max-queue", 1, "--max-tokens-limit", 200, "--http-threads", 8)
    results = []

    def one():
        results.append(request(port, "POST", "/v1/completions", {"model": "base", "prompt": PROMPTS[0], "max_tokens": 120,
                                                                 "temperature": 0, "ignore_eos": True}, key=None))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    code, err = stop_server(proc)
    assert code == 0, err
    statuses = sorted(r[0] for r in results)
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}, statuses
    full = [r[1] for r in results if r[0] == 429]
    assert all(b["error"]["type"] == "rate_limit_error" and b["error"]["code"] == "queue_full" for b in full)
    assert all(r[1]["usage"]["completion_tokens"] == 120 for r in results if r[0] == 200)


def stream_text(port, body):
    """The text of one streamed completion, read event by event."""
    status, raw = request(port, "POST", "/v1/completions", dict(body, stream=True), key=None)
    assert status == 200, raw
    events = [e[len("data: "):] for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])


def test_concurrent_streams_are_batched_and_equal_their_one_at_a_time_outputs(server):
    """32 streaming clients at once, 128 requests of different prompts, lengths and models (base or
    adapter; rows join and leave the batch at every step): each text equals what the server gives
    with --max-concurrency 1."""
    words = ["alpha", "river", "stone", "cloud", "seven", "green", "Paris", "code"]
    bodies = [{"model": "tuned" if i % 4 == 1 else "base", "prompt": f"{words[i % 8]} {words[(3 * i) % 8]} " * (1 + i % 5), "temperature": 0,
               "max_tokens": 6 + (7 * i) % 29, "ignore_eos": i % 3 == 0} for i in range(128)]
    adapter = ["--adapter", f"tuned={server['adapter']}"]
    proc, port = start_server("--max-concurrency", 1, *adapter)
    want = [stream_text(port, b) for b in bodies]
    assert stop_server(proc)[0] == 0
    proc, port = start_server("--max-concurrency", 8, "--http-threads", 40, "--max-queue", 64, *adapter)
    got = [None] * len(bodies)

    def client(k):
        for i in range(k, len(bodies), 32):
            got[i] = stream_text(port, bodies[i])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # A stream's last chunk reaches its client within the decode step; the gauge is published after it.
    deadline = time.time() + 10
    while (samples := scrape(port)[0])[("llmtune_requests_running", ())] != 0 and time.time() < deadline:
        time.sleep(0.05)
    code, err = stop_server(proc)
    assert code == 0, err
    assert got == want
    # Batching happened (some steps advanced several requests), and nothing is left running.
    assert samples[("llmtune_decode_rows_total", ())] > samples[("llmtune_decode_steps_total", ())] > 0
    assert samples[("llmtune_requests_running", ())] == 0


def test_a_client_leaving_mid_stream_frees_its_row(server):
    port = server["port"]
    before, _ = scrape(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps({"model": "base", "prompt": "hi", "max_tokens": 64,
                                                             "temperature": 0, "ignore_eos": True, "stream": True}),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.fp.readline()  # the first event
    conn.sock.shutdown(2)
    conn.close()
    import time

    for _ in range(100):
        after, _ = scrape(port)
        if after[("llmtune_requests_running", ())] == 0 and after.get(("llmtune_request_latency_seconds_count", (("model", "base"),)), 0) > before.get(("llmtune_request_latency_seconds_count", (("model", "base"),)), 0):
            break
        time.sleep(0.05)
    key = ("llmtune_generation_tokens_total", (("model", "base"),))
    generated = after.get(key, 0) - before.get(key, 0)
    assert after[("llmtune_requests_running", ())] == 0 and 0 < generated < 64, generated
    assert request(port, "POST", "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 2})[0] == 200


def test_config_file_and_bad_settings(tmp_path, llmtune):
    BASE = FIXTURE
    root = Path(os.environ.get("LLMTUNE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
    r = llmtune("serve", root / "configs" / "serve-demo.yaml", "port=9", "--print-config")
    assert r.code == 0 and "port: 9" in r.out and "demo-lora=runs/demo-lora/adapter" in r.out, r.err
    r = llmtune("serve", "--model", BASE, "--adapter", "no-path")
    assert r.code == 2 and "NAME=PATH" in r.err and len(r.err_lines) == 1, r.err
    key = tmp_path / "key"
    key.write_text("\n")
    r = llmtune("serve", "--model", BASE, "--api-key-file", key)
    assert r.code == 2 and "first line is empty" in r.err, r.err
    r = llmtune("serve", "--model", BASE, "--api-key", "a", "--api-key-file", key)
    assert r.code == 2 and "not both" in r.err, r.err
    r = llmtune("serve", "--model", BASE, "--port", "70000")
    assert r.code == 2 and "port" in r.err, r.err
    import socket

    # The port is taken before the model is read: a model whose weights are damaged still gets the
    # port's error, so a port in use is found before a long load.
    damaged = tmp_path / "damaged"
    shutil.copytree(BASE, damaged)
    (damaged / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for model in (BASE, damaged):
            r = llmtune("serve", "--model", model, "--port", taken.getsockname()[1])
            errors = [l for l in r.err_lines if l.startswith("llmtune: error:")]
            assert r.code == 1 and len(errors) == 1 and "cannot listen on 127.0.0.1:" in errors[0], r.err

