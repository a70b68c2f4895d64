"""`llmtune serve`'s log probabilities, OpenAI penalties and tool calls, against references: logprobs
equal log_softmax of transformers' logits at each greedy step; presence/frequency penalties equal a
direct computation of OpenAI's definition, in the batched and the one-at-a-time paths; a call the
model writes in the chat template's format comes back as OpenAI's tool_calls, streamed or not."""
import json
import subprocess

import pytest

from conftest import BIN
from test_serve import CHAT, PROMPTS, TOOLS, TOOLS_TEMPLATE, model_copy, stop_server

BASE = None  # the module's model copy (the fixture's model with TOOLS_TEMPLATE)
_model = []


def start(model, *args):
    proc = subprocess.Popen([str(BIN), "serve", "--model", model, "--model-name", "base", "--port", "0", "--json",
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    line = proc.stdout.readline()
    if not line:
        raise AssertionError("the server did not start: " + proc.stderr.read())
    return proc, json.loads(line)["port"]


def connect(port):
    import openai

    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    global BASE
    BASE = model_copy(tmp_path_factory.mktemp("model") / "llama3")
    proc, port = start(BASE)
    yield {"port": port}
    code, err = stop_server(proc)
    assert code == 0, err


@pytest.fixture(scope="module")
def client(server):
    return connect(server["port"])


@pytest.fixture(scope="module")
def tok(server):
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(BASE)


def hf_model():
    import torch
    import transformers as tf

    if not _model:
        _model.append(tf.AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval())
    return _model[0]


def reference(prompt_ids, max_new_tokens):
    """transformers' greedy generate(): the generated ids."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = hf_model().generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                  max_new_tokens=max_new_tokens)
    return out[0, ids.shape[1]:].tolist()


def test_logprobs_equal_transformers_log_softmax(client, server, tok):
    """Each generated token's logprob and the top alternatives are log_softmax of transformers' logits
    at that step (chat's content list and completions' tokens/token_logprobs/top_logprobs)."""
    import torch

    prompt = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    want = reference(prompt, 8)
    with torch.no_grad():
        logits = hf_model()(torch.tensor([prompt + want])).logits[0, len(prompt) - 1:-1]
    lp = logits.float().log_softmax(-1)
    r = client.chat.completions.create(model="base", messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(want) - 1 <= len(content) <= len(want)  # a final stop id has no entry
    for i, c in enumerate(content):
        assert c.token == tok.decode([want[i]]) and bytes(c.bytes) == c.token.encode()
        assert abs(c.logprob - lp[i, want[i]].item()) < 1e-4, (i, c.logprob, lp[i, want[i]].item())
        values, ids = torch.topk(lp[i], 3)
        assert [t.logprob for t in c.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        assert {t.token for t in c.top_logprobs} == {tok.decode([j]) for j in ids.tolist()}

    ids = tok(PROMPTS[0])["input_ids"]
    want = reference(ids, 6)
    with torch.no_grad():
        lp = hf_model()(torch.tensor([ids + want])).logits[0, len(ids) - 1:-1].float().log_softmax(-1)
    got = client.completions.create(model="base", prompt=PROMPTS[0], max_tokens=6, temperature=0, logprobs=2).choices[0].logprobs
    assert got.tokens == [tok.decode([t]) for t in want[:len(got.tokens)]] and len(got.tokens) >= len(want) - 1
    assert got.token_logprobs == pytest.approx([lp[i, t].item() for i, t in enumerate(want[:len(got.tokens)])], abs=1e-4)
    assert [sorted(d.values(), reverse=True) for d in got.top_logprobs] == [
        pytest.approx(torch.topk(lp[i], 2).values.tolist(), abs=1e-4) for i in range(len(got.tokens))]
    assert got.text_offset[0] == 0


def test_streamed_logprobs_concatenate_to_the_non_streamed_ones(client):
    """A stream's chunks carry the logprobs of their tokens: joined in order they equal the whole
    response's (chat content entries; completions' tokens, values, alternatives and text offsets)."""
    kw = dict(model="base", max_tokens=10, temperature=0)
    full = client.chat.completions.create(messages=CHAT, logprobs=True, top_logprobs=2, **kw).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(messages=CHAT, logprobs=True, top_logprobs=2, stream=True, **kw))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(full) >= 8 and [e.model_dump() for e in streamed] == [e.model_dump() for e in full]
    # Each chunk that brings text brings its tokens' logprobs (how many tokens a chunk holds depends
    # on how fast the client reads: a busy machine coalesces several steps into one chunk).
    texts = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts and all(c.choices[0].logprobs and c.choices[0].logprobs.content for c in texts)

    full = client.completions.create(prompt=PROMPTS[0], logprobs=3, **kw).choices[0].logprobs
    chunks = list(client.completions.create(prompt=PROMPTS[0], logprobs=3, stream=True, **kw))
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert all(c.choices[0].logprobs and c.choices[0].logprobs.tokens for c in chunks if c.choices and c.choices[0].text)
    assert [t for p in parts for t in p.tokens] == full.tokens
    assert [v for p in parts for v in p.token_logprobs] == full.token_logprobs
    assert [d for p in parts for d in p.top_logprobs] == full.top_logprobs
    assert [o for p in parts for o in p.text_offset] == full.text_offset


def penalised_greedy(prompt_ids, n, presence, frequency):
    """Greedy decoding with OpenAI's penalties computed directly: logits[t] -= frequency * count(t)
    + presence * (count(t) > 0), counts over the generated tokens."""
    import torch

    model, ids, out = hf_model(), list(prompt_ids), []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float()
        logits = logits - frequency * counts - presence * (counts > 0).float()
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


def test_presence_and_frequency_penalties_equal_a_direct_computation(client, server, tok, tmp_path):
    """Both decoding paths (batched, and --max-concurrency 1); the penalties change the output. The
    second server's template marks Hermes tool calls: text holding none comes back whole, streamed or not."""
    prompt = PROMPTS[0]  # greedy repeats a token at step 19, which the penalties prevent
    ids = tok(prompt)["input_ids"]
    body = dict(model="base", prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    plain = client.completions.create(**body).choices[0].text
    want = tok.decode(penalised_greedy(ids, 24, 1.0, 1.5), skip_special_tokens=True)
    assert want != plain
    assert client.completions.create(presence_penalty=1.0, frequency_penalty=1.5, **body).choices[0].text == want
    hermes = tmp_path / "hermes.jinja"
    hermes.write_text(TOOLS_TEMPLATE.replace("You may call these functions:", "Answer in <tool_call></tool_call> tags:"))
    proc, port = start(BASE, "--max-concurrency", 1, "--chat-template", hermes)
    try:
        one = connect(port)
        assert one.completions.create(presence_penalty=1.0, frequency_penalty=1.5, **body).choices[0].text == want
        r = one.chat.completions.create(model="base", messages=CHAT, tools=TOOLS, max_tokens=8, temperature=0)
        assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
        chunks = list(one.chat.completions.create(model="base", messages=CHAT, tools=TOOLS, max_tokens=8, temperature=0,
                                                  stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    finally:
        assert stop_server(proc)[0] == 0


HERMES_TEMPLATE = TOOLS_TEMPLATE.replace("You may call these functions:", "Answer in <tool_call></tool_call> tags:")
CALL = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>'


def test_tool_calls_come_back_as_openai_tool_calls(server, tok, tmp_path):
    """The fixture model cannot write a call, so a copy of it gets a tokenizer whose vocabulary entry
    for the first token greedy decoding picks (transformers' reference) reads 'Checking.' + a Hermes
    call; the next token is made a stop id. Parsed, streamed and not, as OpenAI returns calls."""
    prompt = tok.apply_chat_template(CHAT, tools=TOOLS, chat_template=HERMES_TEMPLATE, add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    first, second = reference(prompt, 2)
    tj = json.loads((BASE / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    old = next(s for s, i in vocab.items() if i == first)
    del vocab[old]
    vocab["Checking." + CALL] = first  # printable ASCII: its own byte-level spelling
    tj["model"]["merges"] = [m for m in tj["model"]["merges"] if old not in (m if isinstance(m, list) else m.split(" "))
                             and "".join(m if isinstance(m, list) else m.split(" ")) != old]
    copy = tmp_path / "caller"
    copy.mkdir()
    for f in BASE.iterdir():
        if f.name != "tokenizer.json":
            (copy / f.name).symlink_to(f.resolve())
    (copy / "tokenizer.json").write_text(json.dumps(tj))
    (copy / "chat_template.jinja").unlink()
    (copy / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    proc, port = start(copy)
    try:
        c = connect(port)
        body = dict(model="base", messages=CHAT, tools=TOOLS, max_tokens=4, temperature=0,
                    extra_body={"stop_token_ids": [second]})
        r = c.chat.completions.create(**body)
        m = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and m.content == "Checking."
        assert len(m.tool_calls) == 1 and m.tool_calls[0].id.startswith("call_") and m.tool_calls[0].type == "function"
        assert m.tool_calls[0].function.name == "get_weather"
        assert json.loads(m.tool_calls[0].function.arguments) == {"city": "Paris"}
        # tool_choice "none": the text as it is.
        r = c.chat.completions.create(tool_choice="none", **body)
        assert r.choices[0].message.tool_calls is None and r.choices[0].message.content.startswith("Checking." + CALL)
        chunks = list(c.chat.completions.create(stream=True, **body))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Checking."
        calls = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or [])]
        assert [(d.index, d.id, d.function.name, d.function.arguments) for d in calls] == [
            (0, calls[0].id, "get_weather", ""), (0, None, None, calls[1].function.arguments)]
        assert calls[0].id.startswith("call_") and json.loads(calls[1].function.arguments) == {"city": "Paris"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    finally:
        assert stop_server(proc)[0] == 0
