"""Hostile input through the real binary: each case must end with a clear one-line error (or a clear
warning) naming the input, within seconds, never a crash (exit 134/139) or a kill (137), and leave
no run directory behind. The first cases of the hostile-input issue; more come with it."""
import json
import os
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
DEEP = 100_000  # 50,000 levels already parsed cleanly; 100,000 crashed before the depth limit


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


def assert_clean_failure(r, needle):
    assert r.code in (1, 2), (r.code, r.err[-2000:])
    assert len(errors(r)) == 1, r.err[-2000:]
    assert needle in errors(r)[0], errors(r)[0]


def deep_value(depth):
    return "[" * depth + "]" * depth


def chat_row():
    return {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_deeply_nested_dataset_row_is_refused_in_finetune(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(chat_row()) + "\n" + '{"instruction": ' + deep_value(DEEP) + ', "output": "x"}\n')
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1, timeout=60)
    assert_clean_failure(r, "d.jsonl:2")
    assert "nested deeper than 512" in errors(r)[0]
    assert not out.exists()


def test_deeply_nested_dataset_row_is_refused_in_eval(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": ' + deep_value(DEEP) + '}\n')
    r = llmtune("eval", "--model", MODELS / "qwen2", "--data", data, timeout=60)
    assert_clean_failure(r, "d.jsonl:1")


def test_deeply_nested_prompts_file_line_is_refused(llmtune, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": ' + deep_value(DEEP) + '}\n')
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", tmp_path / "o.jsonl", timeout=60)
    assert_clean_failure(r, "p.jsonl:1")
    assert not (tmp_path / "o.jsonl").exists()


def test_deeply_nested_tokenizer_json_is_refused(llmtune, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(MODELS / "qwen2", model)
    tok = json.loads((model / "tokenizer.json").read_text())
    text = json.dumps(tok)
    # A normalizer Sequence nested far beyond any real tokenizer.
    deep = '{"type": "Sequence", "normalizers": [' * DEEP + ']}' * DEEP
    text = text.replace('"normalizer": null', '"normalizer": ' + deep, 1) if '"normalizer": null' in text else \
        text[:-1] + ', "normalizer_extra": ' + deep + "}"
    (model / "tokenizer.json").write_text(text)
    r = llmtune("tokenize", "--model", model, "--text", "hello", timeout=60)
    assert_clean_failure(r, "tokenizer.json")


@pytest.mark.parametrize("template,needle", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "budget"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "64 MiB"),
])
def test_runaway_chat_template_is_stopped(llmtune, tmp_path, template, needle):
    jinja = tmp_path / "evil.jinja"
    jinja.write_text(template)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(chat_row()) + "\n")
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", data, "--template", jinja, timeout=60)
    assert_clean_failure(r, needle)


def test_huge_max_new_tokens_is_clamped_to_the_context(llmtune, tmp_path):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hello", "--max-new-tokens", 100_000_000, "--json",
                timeout=120)
    assert r.code == 0, r.err[-2000:]
    assert any("exceeds the model's context" in l for l in r.err_lines), r.err[-2000:]


def test_lora_rank_beyond_the_layer_is_refused(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(chat_row()) + "\n")
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1, "lora.r=100000",
                timeout=60)
    assert r.code == 2, r.err[-2000:]
    assert_clean_failure(r, "lora.r = 100000 exceeds")
    assert not out.exists()


def test_gradient_accumulation_streams_its_micro_batches(llmtune, tmp_path):
    """64 accumulated micro-batches: one built at a time, and the same update as the losses say."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} of some words"}) + "\n" for i in range(16)))
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1,
                "data.format=text", "train.batch_size=1", "train.grad_accum_steps=64", "--json", timeout=300)
    assert r.code == 0, r.err[-2000:]
    summary = json.loads(r.out)
    assert summary["steps"] == 1 and summary["tokens_seen"] > 0


def test_resume_followed_by_an_override_is_an_override(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} of some words"}) + "\n" for i in range(16)))
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 2,
                "data.format=text", "train.batch_size=2", timeout=300)
    assert r.code == 0, r.err[-2000:]
    r = llmtune("finetune", out / "config.yaml", "--resume", "train.max_steps=3", "--json", timeout=300)
    assert r.code == 0, r.err[-2000:]
    assert json.loads(r.out)["steps"] == 3


def test_target_modules_matching_nothing_is_a_usage_error(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(chat_row()) + "\n")
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1,
                "lora.target_modules=[nonexistent_proj]", timeout=60)
    assert r.code == 2, r.err[-2000:]
    assert_clean_failure(r, "nonexistent_proj")
    assert not out.exists()


def test_a_directory_as_the_config_file_is_refused(llmtune, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.mkdir()
    r = llmtune("finetune", cfg, timeout=60)
    assert r.code == 2, r.err[-2000:]
    assert_clean_failure(r, "is a directory")


def test_token_ids_beyond_the_model_vocabulary_are_refused(llmtune, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    config = json.loads((MODELS / "qwen2" / "config.json").read_text())
    config["vocab_size"] = 64  # far below the tokenizer's ids
    (model / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODELS / "qwen2" / f, model / f)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "a row with several words in it"}) + "\n")
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", model, "--data", data, "--output", out, "--max-steps", 1, "method=full",
                "model.init=random", "data.format=text", timeout=60)
    assert_clean_failure(r, "d.jsonl:1: token id")
    assert not out.exists()
