"""`llmtune tokenize --data F --row K` end to end: the --json output's input_ids and labels against
the data reference (transformers' apply_chat_template on prefixes, HF offsets), the marked text,
and the errors for a bad row."""
import json
import os
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "data"))
import data_reference  # noqa: E402

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", ROOT / "build" / "fixtures"))
MODELS = FIXTURES / "models"

ROWS = [
    {"instruction": "Name a color.", "input": "", "output": "Blue."},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
                  {"role": "assistant", "content": "Goodbye."}]},
    {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    {"prompt": "The sky is", "completion": " blue."},
    {"text": "Plain text row."},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    p = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return p


def fmt_of(row):
    if "messages" in row or "conversations" in row:
        return "messages"
    if "instruction" in row:
        return "alpaca"
    return "completion" if "prompt" in row else "text"


@pytest.mark.parametrize("model,template", [("qwen2", None), ("llama3", None), ("mistral", "zephyr"),
                                            ("mistral", "alpaca")])
def test_row_labels_equal_reference(llmtune, dataset, model, template):
    tok = AutoTokenizer.from_pretrained(MODELS / model)
    for k, row in enumerate(ROWS, start=1):
        args = ["tokenize", "--model", MODELS / model, "--data", dataset, "--row", k, "--json"]
        case = {"format": fmt_of(row), "row": row, "train_on": "assistant", "template_name": template or "auto"}
        if template:
            args += ["--template", template]
        r = llmtune(*args)
        assert r.code == 0, r.err
        out = json.loads(r.out)
        if template and case["format"] not in ("completion", "text"):
            tok.chat_template = named_template(llmtune, template)
        ref = (data_reference.plain_case if case["format"] in ("completion", "text") else data_reference.chat_case)(tok, case)
        assert out["text"] == ref["text"], (model, k)
        assert out["input_ids"] == ref["input_ids"], (model, k)
        assert out["labels"] == ref["labels"], (model, k)
        assert any(l != -100 for l in out["labels"])
        for b, e in out["trained_spans"]:
            assert 0 <= b < e <= len(out["text"].encode("utf-8"))


_templates = {}


def named_template(llmtune, name):
    """The named template's source as shipped in the binary (read from src/data/templates.cpp)."""
    if name not in _templates:
        src = (ROOT / "src" / "data" / "templates.cpp").read_text(encoding="utf-8")
        var = {"alpaca": "kAlpaca", "chatml": "kChatml", "llama3": "kLlama3", "mistral": "kMistral", "zephyr": "kZephyr"}[name]
        start = src.index(f'const char* {var} = R"JINJA(') + len(f'const char* {var} = R"JINJA(')
        _templates[name] = src[start:src.index(')JINJA"', start)]
    return _templates[name]


def test_row_text_marks_trained_spans(llmtune, dataset):
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", dataset, "--row", 2)
    assert r.code == 0, r.err
    assert "«Hello!<|im_end|>»" in r.out and "«Goodbye.<|im_end|>»" in r.out
    assert "-100" in r.out and "trained" in r.out


def test_row_errors_are_one_line(llmtune, dataset, tmp_path):
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", dataset, "--row", 99)
    assert r.code == 1 and "--row 99 is past the end" in r.err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user"}]}\n', encoding="utf-8")
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", bad, "--json")
    assert r.code == 1 and f"{bad}:1: messages[0] needs a field \"content\"" in r.err
    r = llmtune("tokenize", "--model", MODELS / "mistral", "--data", dataset, "--row", 2)
    assert r.code == 1 and "has no chat template" in r.err
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", dataset, "--template", "vicuna")
    assert r.code == 1 and "unknown chat template \"vicuna\"" in r.err
