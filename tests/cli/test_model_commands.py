"""eval, infer and tokenize through the real binary, against transformers on the tiny fixtures
(tests/fixtures/make_models.py): perplexity, greedy generations, chat-templated prompts, ids."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
FAMILIES = ["llama3", "tinyllama", "llama-linear", "mistral", "qwen2", "gemma"]
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München! Ça va? Привет, мир. 你好，世界。",
    "def f(x):\n    return x * 2  # doubled\n\n\n1234567890",
    "short",
    "Emoji 👩‍💻 and tabs\tand   spaces.",
]


def model_dir(name):
    d = MODELS / name
    if not (d / "tokenizer_config.json").exists() and not (d / "tokenizer.json").exists():
        pytest.skip(f"{name}: no tokenizer fixture next to the model")
    return d


_cache = {}


def hf(name):
    if name not in _cache:
        d = str(model_dir(name))
        _cache[name] = (AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval())
    return _cache[name]


def hf_loss(model, rows):
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in rows:
            if len(ids) < 2:
                continue
            t = torch.tensor([ids])
            loss = model(input_ids=t, labels=t).loss.item()
            total += loss * (len(ids) - 1)
            count += len(ids) - 1
    return total / count, count


@pytest.mark.parametrize("name", FAMILIES)
def test_eval_jsonl_equals_transformers(llmtune, tmp_path, name):
    tok, model = hf(name)
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    r = llmtune("eval", "--model", MODELS / name, "--data", data, "--max-seq-len", 24, "--batch-size", 2, "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)
    want, count = hf_loss(model, [tok(t)["input_ids"][:24] for t in TEXTS])
    assert ours["tokens"] == count
    assert abs(ours["loss"] - want) <= 1e-4 * abs(want)
    assert abs(ours["perplexity"] - math.exp(want)) <= 1e-4 * math.exp(want)


def test_eval_txt_windows_equal_transformers(llmtune, tmp_path):
    tok, model = hf("llama3")
    text = "\n".join(TEXTS * 4)
    data = tmp_path / "eval.txt"
    data.write_text(text)
    r = llmtune("eval", "--model", MODELS / "llama3", "--data", data, "--max-seq-len", 32, "--json")
    assert r.code == 0, r.err
    ids = tok(text)["input_ids"]
    windows = [ids[i:i + 32] for i in range(0, len(ids), 32)]
    want, count = hf_loss(model, windows)
    ours = json.loads(r.out)
    assert ours["tokens"] == count
    assert abs(ours["loss"] - want) <= 1e-4 * abs(want)


@pytest.mark.parametrize("name", ["llama3", "tinyllama", "qwen2"])
def test_infer_raw_greedy_equals_transformers(llmtune, name):
    tok, model = hf(name)
    prompt = "The quick brown fox"
    r = llmtune("infer", "--model", MODELS / name, "--prompt", prompt, "--raw", "--max-new-tokens", 20, "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20)
    want = out[0, ids.shape[1]:].tolist()
    assert ours["token_ids"] == want
    assert ours["completion"] == tok.decode(want, skip_special_tokens=True)
    assert ours["generation_tokens_per_second"] >= 0


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_infer_chat_template_prompt_equals_transformers(llmtune, name):
    tok, model = hf(name)
    if not tok.chat_template:
        pytest.skip(f"{name}: fixture tokenizer has no chat template")
    r = llmtune("infer", "--model", MODELS / name, "--prompt", "Hello there!", "--max-new-tokens", 12, "--json")
    assert r.code == 0, r.err
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello there!"}], add_generation_prompt=True,
                                  tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    ours = json.loads(r.out)
    assert ours["prompt_tokens"] == ids.shape[1]
    assert ours["token_ids"] == out[0, ids.shape[1]:].tolist()


def test_infer_prompts_file_writes_jsonl(llmtune, tmp_path):
    prompts = tmp_path / "in.jsonl"
    prompts.write_text(json.dumps({"prompt": "one"}) + "\n" + json.dumps({"prompt": "two", "id": 7}) + "\n")
    out = tmp_path / "out.jsonl"
    r = llmtune("infer", "--model", MODELS / "llama3", "--prompts-file", prompts, "--output", out, "--raw",
                "--max-new-tokens", 5)
    assert r.code == 0, r.err
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["one", "two"] and rows[1]["id"] == 7
    single = json.loads(llmtune("infer", "--model", MODELS / "llama3", "--prompt", "two", "--raw",
                                "--max-new-tokens", 5, "--json").out)
    assert rows[1]["token_ids"] == single["token_ids"]


def test_infer_chat_keeps_the_conversation(llmtune):
    tok, model = hf("qwen2")
    if not tok.chat_template:
        pytest.skip("qwen2 fixture tokenizer has no chat template")
    r = llmtune("infer", "--model", MODELS / "qwen2", "--chat", "--max-new-tokens", 6, "--json",
                input="Hi there\nAnd now?\n/exit\n")
    assert r.code == 0, r.err
    turns = [json.loads(l) for l in r.out.splitlines()]
    assert len(turns) == 2
    # The second prompt holds the first exchange: transformers renders the same conversation.
    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": turns[0]["completion"]},
            {"role": "user", "content": "And now?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert turns[1]["prompt_tokens"] == len(ids)


def test_infer_sampling_is_seeded(llmtune):
    args = ("infer", "--model", MODELS / "llama3", "--prompt", "x", "--raw", "--max-new-tokens", 16, "--json",
            "--temperature", "0.9", "--top-k", "50", "--top-p", "0.9")
    a = json.loads(llmtune(*args, "--seed", "1").out)["token_ids"]
    b = json.loads(llmtune(*args, "--seed", "1").out)["token_ids"]
    assert a == b


@pytest.mark.parametrize("name", FAMILIES)
def test_tokenize_equals_transformers(llmtune, name):
    tok, _ = hf(name)
    for text in TEXTS:
        r = llmtune("tokenize", "--model", MODELS / name, "--text", text, "--json")
        assert r.code == 0, r.err
        assert json.loads(r.out)["ids"] == tok(text)["input_ids"], text


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_eval_with_peft_adapter_equals_peft(llmtune, tmp_path, kind):
    from peft import LoraConfig, get_peft_model
    tok, _ = hf("llama3")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir("llama3")), dtype=torch.float32)
    torch.manual_seed(3)
    peft_model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", use_dora=kind == "dora",
                                                 init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.normal_(0.0, 0.2)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(str(adapter))
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    r = llmtune("eval", "--model", MODELS / "llama3", "--adapter", adapter, "--data", data, "--json")
    assert r.code == 0, r.err
    want, count = hf_loss(peft_model, [tok(t)["input_ids"] for t in TEXTS])
    base_loss = json.loads(llmtune("eval", "--model", MODELS / "llama3", "--data", data, "--json").out)["loss"]
    ours = json.loads(r.out)
    assert ours["tokens"] == count
    assert abs(base_loss - want) > 1e-2  # the adapter changes the result
    assert abs(ours["loss"] - want) <= 1e-4 * abs(want)


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


def test_model_errors_are_one_line(llmtune, tmp_path):
    r = llmtune("eval", "--data", "x.jsonl")
    assert r.code == 2 and errors(r) == r.err_lines and "missing required key 'model'" in errors(r)[0]
    r = llmtune("eval", "--model", tmp_path / "nope", "--data", "x.jsonl")
    assert r.code == 1 and len(errors(r)) == 1 and "nope" in errors(r)[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": 1}\n')
    r = llmtune("eval", "--model", MODELS / "llama3", "--data", bad)
    assert r.code == 1 and len(errors(r)) == 1 and f"{bad}:2" in errors(r)[0]
    r = llmtune("infer", "--model", MODELS / "llama3")
    assert r.code == 2 and "exactly one of" in errors(r)[0]
    r = llmtune("infer", "--model", MODELS / "llama3", "--prompts-file", bad, "--output", tmp_path / "o.jsonl", "--raw")
    assert r.code == 1 and len(errors(r)) == 1 and not (tmp_path / "o.jsonl").exists()
