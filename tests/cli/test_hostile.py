"""Hostile input through the real binary: each case must end with a clear one-line error (or a clear
warning) naming the input, within seconds and under a bounded address space, never a crash (exit
134/139) or a kill (137), with empty stdout under --json, and leave nothing half-written behind
(no run directory, no output file, no hidden temporary). Cases that another area still has to fix
are strict xfails naming that area."""
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import BIN, Result  # noqa: E402

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
DEEP = 100_000  # 50,000 levels already parsed cleanly; 100,000 crashed before the depth limit
# Address space for every hostile run: libtorch without a GPU starts in well under 4 GiB, so a case
# that tries to allocate a huge KV cache, model or batch fails here instead of swapping the machine.
RLIMIT_AS_BYTES = 8 << 30


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (RLIMIT_AS_BYTES, RLIMIT_AS_BYTES))


@pytest.fixture
def llmtune():
    """The binary under RLIMIT_AS and a timeout (60 s unless given); returns code, stdout, stderr."""
    assert BIN.exists(), f"{BIN} is missing: build first (scripts/build.sh)"

    def run(*args, cwd=None, timeout=60, input=None):
        t0 = time.monotonic()
        proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL, cwd=cwd, timeout=timeout,
                              preexec_fn=_limit_memory, errors="replace")
        r = Result(proc)
        r.seconds = time.monotonic() - t0
        return r

    return run


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


def assert_clean_failure(r, needle, code=None, json_mode=False):
    """Exit 1 or 2 (or `code`), exactly one error line, containing `needle` (a str or a tuple of
    strs); with --json nothing on stdout."""
    assert r.code in ((code,) if code else (1, 2)), (r.code, r.err[-2000:])
    assert len(errors(r)) == 1, r.err[-2000:]
    for n in (needle,) if isinstance(needle, str) else needle:
        assert str(n) in errors(r)[0], errors(r)[0]
    if json_mode:
        assert r.out == "", r.out[:2000]


def hidden_leftovers(directory):
    """Hidden temporaries (".name.tmp-PID-N", ".name.old-PID-N") anywhere under `directory`."""
    return [p for p in Path(directory).rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]


def model_copy(tmp_path, name="qwen2", **config_changes):
    """A copy of a fixture model with config.json values changed (None removes a key)."""
    model = tmp_path / f"{name}-copy"
    shutil.copytree(MODELS / name, model)
    if config_changes:
        config = json.loads((model / "config.json").read_text())
        for k, v in config_changes.items():
            if v is None:
                config.pop(k, None)
            else:
                config[k] = v
        (model / "config.json").write_text(json.dumps(config))
    return model


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


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


@pytest.mark.parametrize("where", ["model.vocab", "added_tokens"])
def test_vocabulary_id_far_past_its_entries_is_refused(llmtune, tmp_path, where):
    """Found by fuzzing: one id of 506,500,234 in a 4 KB tokenizer.json made the id -> token table
    that large (gigabytes)."""
    model = tmp_path / "model"
    shutil.copytree(MODELS / "qwen2", model)
    tok = json.loads((model / "tokenizer.json").read_text())
    if where == "model.vocab":
        tok["model"]["vocab"]["far-away"] = 506_500_234
    else:
        tok["added_tokens"].append({"id": 2**31 - 1, "content": "<far>", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    (model / "tokenizer.json").write_text(json.dumps(tok))
    r = llmtune("tokenize", "--model", model, "--text", "hello", timeout=60)
    assert_clean_failure(r, ("tokenizer.json", "far past"))
    assert r.seconds < 30


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


@pytest.mark.parametrize("regex,needle", [("q_proj(", "is not a valid regular expression"),
                                          ("(.|.)*[#%]", "backtracks without end")])
def test_a_bad_or_runaway_target_regex_is_a_usage_error(llmtune, tmp_path, regex, needle):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(chat_row()) + "\n")
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1,
                f'lora.target_modules=["{regex}"]', timeout=60)
    assert_clean_failure(r, (f"lora.target_modules '{regex}'", needle), code=2)
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


# ---------------------------------------------------------------------------------------------
# Numbers on the command line: range-checked as typed, never clamped; messages spell the flag as
# the parser takes it.

HUGE = "99999999999999999999999"  # past INT64_MAX


def data_file(tmp_path, name="d.jsonl"):
    return write_jsonl(tmp_path / name, [{"text": "a row with several words in it"}, {"text": "another row of words"}])


@pytest.mark.parametrize("command,flag", [
    ("infer", "--max-new-tokens"), ("infer", "--top-k"), ("infer", "--seed"), ("eval", "--batch-size"),
    ("eval", "--max-seq-len"), ("quantize", "--max-seq-len"), ("finetune", "--max-steps"), ("tokenize", "--row"),
    ("tokenize", "--max-seq-len"),
])
@pytest.mark.parametrize("value", [HUGE, "-" + HUGE])
def test_integer_flags_beyond_int64_are_refused_not_clamped(llmtune, tmp_path, command, flag, value):
    data = data_file(tmp_path)
    args = {"infer": ["--prompt", "hi"], "eval": ["--data", data], "quantize": ["--output", tmp_path / "q.gguf", "--type", "f16"],
            "finetune": ["--data", data, "--output", tmp_path / "run"], "tokenize": ["--data", data]}[command]
    r = llmtune(command, "--model", MODELS / "qwen2", *args, f"{flag}={value}", "--json")
    assert_clean_failure(r, (flag, "out of range"), code=2, json_mode=True)
    assert not (tmp_path / "run").exists() and not (tmp_path / "q.gguf").exists()


@pytest.mark.parametrize("flag,value", [("--temperature", "1e999"), ("--top-p", "-1e999"), ("--temperature", "nan")])
def test_number_flags_that_are_not_finite_are_refused(llmtune, flag, value):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", f"{flag}={value}", "--json")
    assert_clean_failure(r, flag, code=2, json_mode=True)


@pytest.mark.parametrize("command,flag,value", [
    ("infer", "--max-new-tokens", "0"), ("infer", "--top-k", "-3"), ("infer", "--top-p", "0"),
    ("infer", "--repetition-penalty", "0"), ("eval", "--max-seq-len", "1"), ("eval", "--batch-size", "0"),
    ("quantize", "--batch-size", "0"), ("finetune", "--max-steps", "-7"),
])
def test_range_errors_spell_the_flag_as_typed(llmtune, tmp_path, command, flag, value):
    data = data_file(tmp_path)
    args = {"infer": ["--prompt", "hi"], "eval": ["--data", data], "quantize": ["--output", tmp_path / "q.gguf", "--type", "f16"],
            "finetune": ["--data", data, "--output", tmp_path / "run"]}[command]
    r = llmtune(command, "--model", MODELS / "qwen2", *args, flag, value, "--json")
    assert_clean_failure(r, "flag " + flag, code=2, json_mode=True)
    assert "--" + flag[2:].replace("-", "_") not in r.err  # never a spelling the parser refuses
    assert not (tmp_path / "run").exists() and not (tmp_path / "q.gguf").exists()


def test_integer_overrides_beyond_int64_are_refused(llmtune, tmp_path):
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data_file(tmp_path), "--output", tmp_path / "run",
                f"train.batch_size={HUGE}", "--json")
    assert_clean_failure(r, ("train.batch_size=", "between"), code=2, json_mode=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size,needle", [("20000000000GB", "too large"), ("18446744073709551616", "too large"),
                                         ("0.1", "less than one byte"), ("1e9", "not a size")])
def test_shard_size_overflow_is_refused(llmtune, tmp_path, adapter, size, needle):
    out = tmp_path / "merged"
    r = llmtune("merge", "--adapter", adapter, "--output", out, "--shard-size", size, "--json")
    assert_clean_failure(r, ("shard_size", needle), code=2, json_mode=True)
    assert not out.exists() and not hidden_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# YAML configs.

def test_a_second_yaml_document_is_refused(llmtune, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {MODELS / 'qwen2'}\nprompt: hi\n---\nmax_new_tokens: 3\n")
    r = llmtune("infer", cfg, "--json")
    assert_clean_failure(r, (f"{cfg}:3", "second YAML document"), code=2, json_mode=True)


@pytest.mark.parametrize("style", ["flow", "block"])
def test_yaml_nested_deeper_than_512_is_refused(llmtune, tmp_path, style):
    cfg = tmp_path / "run.yaml"
    if style == "flow":
        cfg.write_text("stop: " + "[" * 600 + "]" * 600 + "\n")
    else:
        cfg.write_text("stop:\n" + "".join("  " * i + "- \n" for i in range(1, 700)))
    r = llmtune("infer", cfg, "--json")
    assert_clean_failure(r, (str(cfg), "nested deeper than 512"), code=2, json_mode=True)


def test_yaml_syntax_error_is_the_only_error(llmtune, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: [unclosed\n")
    r = llmtune("infer", cfg, "--json")
    assert_clean_failure(r, (f"{cfg}:", "YAML syntax error"), code=2, json_mode=True)  # no "missing required key" lines


def test_typo_of_a_required_key_is_one_error(llmtune, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"modle: {MODELS / 'qwen2'}\nprompt: hi\n")
    r = llmtune("infer", cfg, "--json")
    assert_clean_failure(r, (f"{cfg}:1", "did you mean 'model'"), code=2, json_mode=True)


def test_yaml_alias_bomb_is_quick(llmtune, tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("\n".join(lines) + "\nstop: *i\n")
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", cfg, "--json", timeout=30)
    assert r.code == 2 and r.seconds < 20, (r.code, r.seconds)
    assert r.out == ""


def test_binary_garbage_as_the_config_is_one_error(llmtune, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(bytes(range(256)) * 4)
    r = llmtune("env", cfg, "--json")
    assert_clean_failure(r, str(cfg), code=2, json_mode=True)


@pytest.mark.parametrize("text,needle", [("seed: 1e30\n", "expects an integer"), ("seed: .inf\n", "expects an integer"),
                                         ("seed: 99999999999999999999\n", "between")])
def test_out_of_range_yaml_numbers_name_the_line(llmtune, tmp_path, text, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", cfg, "--json")
    assert_clean_failure(r, (f"{cfg}:1", needle), code=2, json_mode=True)


def test_missing_config_file_is_named(llmtune, tmp_path):
    r = llmtune("env", tmp_path / "nope.yaml", "--json")
    assert_clean_failure(r, ("nope.yaml", "no such file"), code=2, json_mode=True)


# ---------------------------------------------------------------------------------------------
# Data files.

def test_a_directory_as_the_tokenize_data_is_named_a_directory(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.mkdir()
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", data, "--json")
    assert_clean_failure(r, (str(data), "is a directory"), code=2, json_mode=True)


def test_a_directory_as_the_prompts_file_is_named_a_directory(llmtune, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.mkdir()
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", tmp_path / "o.jsonl", "--json")
    assert_clean_failure(r, (str(prompts), "is a directory"), code=2, json_mode=True)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("command", ["finetune", "eval"])
def test_a_directory_as_the_dataset_is_named_a_directory(llmtune, tmp_path, command):
    data = tmp_path / "d.jsonl"
    data.mkdir()
    extra = ["--output", tmp_path / "run", "--max-steps", 1] if command == "finetune" else []
    r = llmtune(command, "--model", MODELS / "qwen2", "--data", data, *extra, "--json")
    assert_clean_failure(r, (str(data), "directory"), json_mode=True)
    assert not (tmp_path / "run").exists()


def test_a_directory_as_the_eval_data_of_quantize_writes_nothing(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.mkdir()
    out = tmp_path / "q.gguf"
    r = llmtune("quantize", "--model", MODELS / "qwen2", "--output", out, "--type", "f16", "--eval-data", data, "--json")
    assert_clean_failure(r, (str(data), "directory"), code=2, json_mode=True)
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "infer"])
def test_json_number_overflow_in_a_row_names_file_and_line(llmtune, tmp_path, command):
    rows = write_jsonl(tmp_path / "d.jsonl", ['{"text": "fine", "prompt": "fine"}', '{"text": "x", "prompt": "x", "n": 1e999}'])
    args = ["--data", rows] if command == "eval" else ["--prompts-file", rows, "--output", tmp_path / "o.jsonl"]
    r = llmtune(command, "--model", MODELS / "qwen2", *args, "--json")
    assert_clean_failure(r, f"{rows}:2", json_mode=True)
    assert "[json.exception" not in errors(r)[0]
    assert not (tmp_path / "o.jsonl").exists()


def test_json_number_overflow_in_config_json_names_the_file(llmtune, tmp_path):
    model = model_copy(tmp_path)
    (model / "config.json").write_text((model / "config.json").read_text().replace('"rope_theta": ', '"rope_theta": 1e999, "x": ', 1))
    r = llmtune("infer", "--model", model, "--prompt", "hi", "--json")
    assert r.code in (1, 2) and len(errors(r)) == 1 and "config.json" in errors(r)[0], r.err[-2000:]
    assert r.out == ""


def test_json_number_overflow_in_config_json_is_our_message(llmtune, tmp_path):
    model = model_copy(tmp_path)
    (model / "config.json").write_text((model / "config.json").read_text().replace('"rope_theta": ', '"rope_theta": 1e999, "x": ', 1))
    r = llmtune("infer", "--model", model, "--prompt", "hi", "--json")
    assert_clean_failure(r, "config.json", json_mode=True)
    assert "[json.exception" not in errors(r)[0]


def test_tokenize_json_of_invalid_utf8_bytes(llmtune, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text(f"exec {BIN} tokenize --model {MODELS / 'qwen2'} --text \"$(printf '\\377\\376 bad')\" --json\n")
    proc = subprocess.run(["bash", str(script)], capture_output=True, timeout=60, preexec_fn=_limit_memory)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["text"].endswith(" bad")


@pytest.mark.parametrize("row", ["0", "-1"])
def test_tokenize_row_zero_or_negative_is_refused(llmtune, tmp_path, row):
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", data_file(tmp_path), f"--row={row}", "--json")
    assert_clean_failure(r, ("--row", "1-based"), code=2, json_mode=True)


def test_tokenize_row_past_the_end(llmtune, tmp_path):
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", data_file(tmp_path), "--row", "3", "--json")
    assert_clean_failure(r, "--row 3 is past the end", json_mode=True)


@pytest.mark.parametrize("line,needle", [("[1, 2]", "JSON object"), ('{"prompt": 5}', 'expected "prompt"'),
                                         ("{not json", "not valid JSON")])
def test_bad_prompts_file_rows_name_file_and_line(llmtune, tmp_path, line, needle):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, line])
    out = tmp_path / "o.jsonl"
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", out, "--max-new-tokens", 2,
                "--json")
    assert_clean_failure(r, (f"{prompts}:2", needle), json_mode=True)
    assert not out.exists() and not hidden_leftovers(tmp_path)


def test_binary_garbage_as_eval_data(llmtune, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(bytes(range(256)) * 8)
    r = llmtune("eval", "--model", MODELS / "qwen2", "--data", data, "--json")
    assert_clean_failure(r, f"{data}:1", json_mode=True)


def test_missing_dataset_leaves_no_run_directory(llmtune, tmp_path):
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", tmp_path / "nope.jsonl", "--output", out, "--max-steps", 1,
                "--json")
    assert_clean_failure(r, "nope.jsonl", json_mode=True)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Prompts.

def test_a_tiny_temperature_samples_like_greedy(llmtune):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", "--temperature", "1e-300", "--max-new-tokens", 3,
                "--json")
    assert r.code == 0, r.err[-2000:]


def test_the_largest_eval_max_seq_len_still_scores(llmtune, tmp_path):
    r = llmtune("eval", "--model", MODELS / "qwen2", "--data", data_file(tmp_path), "--max-seq-len", 2**63 - 1, "--json")
    assert r.code == 0, r.err[-2000:]


def test_the_largest_eval_batch_size_still_scores(llmtune, tmp_path):
    r = llmtune("eval", "--model", MODELS / "qwen2", "--data", data_file(tmp_path), "--batch-size", 2**63 - 1, "--json")
    assert r.code == 0, r.err[-2000:]


def test_an_empty_prompt_is_rendered_through_the_chat_template(llmtune):
    """As transformers: an empty user message is still a templated prompt, and generation runs."""
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "", "--max-new-tokens", 2, "--json")
    assert r.code == 0, r.err[-2000:]
    assert json.loads(r.out)["prompt_tokens"] > 0


@pytest.mark.parametrize("command,flag", [("infer", "--model"), ("finetune", "--output"), ("finetune", "--data"),
                                          ("quantize", "--output"), ("eval", "--data")])
def test_an_empty_required_flag_is_named(llmtune, tmp_path, command, flag):
    flags = {"infer": {"--model": MODELS / "qwen2", "--prompt": "hi"},
             "finetune": {"--model": MODELS / "qwen2", "--data": data_file(tmp_path), "--output": tmp_path / "run"},
             "quantize": {"--model": MODELS / "qwen2", "--output": tmp_path / "q.gguf", "--type": "f16"},
             "eval": {"--model": MODELS / "qwen2", "--data": data_file(tmp_path)}}[command]
    flags[flag] = ""
    r = llmtune(command, *[x for kv in flags.items() for x in kv], "--json")
    assert_clean_failure(r, ("flag " + flag, "empty"), code=2, json_mode=True)
    assert not (tmp_path / "run").exists()


def test_an_empty_raw_prompt_starts_from_bos(llmtune):
    r = llmtune("infer", "--model", MODELS / "tinyllama", "--prompt", "", "--raw", "--max-new-tokens", 2, "--json")
    assert r.code == 0, r.err[-2000:]
    assert json.loads(r.out)["prompt_tokens"] == 1


def test_an_empty_raw_prompt_without_bos_is_refused(llmtune):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "", "--raw", "--max-new-tokens", 2, "--json")
    assert_clean_failure(r, ("--prompt", "empty"), code=2, json_mode=True)


def test_a_prompt_longer_than_the_context_is_refused(llmtune):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "word " * 400, "--json")
    assert_clean_failure(r, ("--prompt", "context"), json_mode=True)


def test_a_prompts_file_row_longer_than_the_context_names_its_line(llmtune, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "short"}, {"prompt": "word " * 400}])
    out = tmp_path / "o.jsonl"
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", out, "--max-new-tokens", 2,
                "--json")
    assert_clean_failure(r, (f"{prompts}:2", "context"), json_mode=True)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Model files (config.json values, weights).

@pytest.mark.parametrize("changes,needle", [
    ({"hidden_size": -64}, "hidden_size"), ({"hidden_size": 0}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"), ({"num_hidden_layers": -1}, "num_hidden_layers"),
    ({"vocab_size": 0}, "vocab_size"), ({"num_attention_heads": 3}, "num_attention_heads"),
    ({"num_attention_heads": 0}, "num_attention_heads"), ({"hidden_size": 10**12}, "hidden_size"),
    ({"max_position_embeddings": 0}, "max_position_embeddings"), ({"hidden_size": "64"}, "hidden_size"),
    ({"vocab_size": 4096}, "embed_tokens"), ({"intermediate_size": 7}, "mlp"),
    ({"num_hidden_layers": 123456789012345678901234567890}, "num_hidden_layers"),
    ({"num_hidden_layers": 2**63 - 1}, "num_hidden_layers"), ({"rms_norm_eps": -1}, "rms_norm_eps"),
])
def test_bad_config_json_values_are_named(llmtune, tmp_path, changes, needle):
    model = model_copy(tmp_path, **changes)
    r = llmtune("infer", "--model", model, "--prompt", "hi", "--max-new-tokens", 2, "--json")
    assert_clean_failure(r, needle, json_mode=True)


@pytest.mark.parametrize("theta", [-1, 0])
def test_non_positive_rope_theta_is_refused(llmtune, tmp_path, theta):
    model = model_copy(tmp_path, rope_theta=theta)
    r = llmtune("infer", "--model", model, "--prompt", "hi", "--max-new-tokens", 2, "--json")
    assert_clean_failure(r, "rope_theta", json_mode=True)


def test_missing_config_json_is_named(llmtune, tmp_path):
    model = model_copy(tmp_path)
    (model / "config.json").unlink()
    r = llmtune("infer", "--model", model, "--prompt", "hi", "--json")
    assert_clean_failure(r, "config.json", json_mode=True)


def test_config_json_that_is_not_json(llmtune, tmp_path):
    model = model_copy(tmp_path)
    (model / "config.json").write_text("{ this is not json")
    r = llmtune("eval", "--model", model, "--data", data_file(tmp_path), "--json")
    assert_clean_failure(r, "config.json", json_mode=True)


@pytest.mark.parametrize("damage", ["truncated", "huge_header", "zero_header"])
def test_damaged_safetensors_are_named(llmtune, tmp_path, damage):
    model = model_copy(tmp_path)
    weights = model / "model.safetensors"
    blob = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(blob[: len(blob) // 2])
    elif damage == "huge_header":
        weights.write_bytes(struct.pack("<Q", 1 << 62) + blob[8:])
    else:
        weights.write_bytes(struct.pack("<Q", 0) + blob[8:])
    r = llmtune("infer", "--model", model, "--prompt", "hi", "--json")
    assert_clean_failure(r, "model.safetensors", json_mode=True)


def test_a_file_as_the_model_is_named(llmtune, tmp_path):
    f = tmp_path / "model"
    f.write_text("x")
    r = llmtune("infer", "--model", f, "--prompt", "hi", "--json")
    assert_clean_failure(r, (str(f), "is a file"), json_mode=True)


def test_missing_tokenizer_is_named(llmtune, tmp_path):
    model = model_copy(tmp_path)
    (model / "tokenizer.json").unlink()
    r = llmtune("tokenize", "--model", model, "--text", "hi", "--json")
    assert_clean_failure(r, str(model), json_mode=True)


# ---------------------------------------------------------------------------------------------
# Chat templates.

@pytest.mark.parametrize("template,needle", [
    ("{% for m in messages %}{{ m.content }", "evil.jinja"),
    ("{{ raise_exception('no system messages here') }}", "no system messages here"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "evil.jinja"),
])
def test_bad_chat_templates_are_one_error(llmtune, tmp_path, template, needle):
    jinja = tmp_path / "evil.jinja"
    jinja.write_text(template)
    data = write_jsonl(tmp_path / "d.jsonl", [chat_row()])
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", data, "--template", jinja, "--json", timeout=60)
    assert_clean_failure(r, needle, json_mode=True)


def test_a_missing_template_file_is_a_usage_error(llmtune, tmp_path):
    r = llmtune("eval", "--model", MODELS / "qwen2", "--data", data_file(tmp_path), "--template", tmp_path / "nope.jinja",
                "--json")
    assert_clean_failure(r, "nope.jinja", code=2, json_mode=True)


# ---------------------------------------------------------------------------------------------
# Adapters.

@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter trained one step by llmtune itself on the qwen2 fixture (a finetune run directory)."""
    root = tmp_path_factory.mktemp("adapter")
    data = write_jsonl(root / "d.jsonl", [{"text": f"row {i} of some words"} for i in range(4)])
    proc = subprocess.run([str(BIN), "finetune", "--model", str(MODELS / "qwen2"), "--data", str(data), "--output",
                           str(root / "run"), "--max-steps", "1", "data.format=text", "lora.r=4"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "run" / "adapter"


def adapter_copy(adapter, tmp_path, **config_changes):
    out = tmp_path / "adapter"
    shutil.copytree(adapter, out)
    if config_changes:
        config = json.loads((out / "adapter_config.json").read_text())
        config.update(config_changes)
        (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_the_base_path_is_stored_absolute_and_merge_works_from_anywhere(llmtune, adapter, tmp_path):
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_absolute(), base
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = llmtune("merge", "--adapter", adapter, "--output", tmp_path / "merged", "--json", cwd=elsewhere)
    assert r.code == 0, r.err[-2000:]


def test_a_relative_base_path_is_also_looked_for_from_the_adapter(llmtune, adapter, tmp_path):
    shutil.copytree(MODELS / "qwen2", tmp_path / "base")
    ad = adapter_copy(adapter, tmp_path, base_model_name_or_path="../base")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = llmtune("merge", "--adapter", ad, "--output", tmp_path / "merged", "--json", cwd=elsewhere)
    assert r.code == 0, r.err[-2000:]
    assert (elsewhere / json.loads(r.out)["model"]).resolve() == (tmp_path / "base").resolve()


def test_a_base_path_found_nowhere_names_the_adapter_config(llmtune, adapter, tmp_path):
    ad = adapter_copy(adapter, tmp_path, base_model_name_or_path="no/such-base-dir")
    r = llmtune("merge", "--adapter", ad, "--output", tmp_path / "merged", "--json")
    assert_clean_failure(r, ("adapter_config.json", "base_model_name_or_path", "--model"), json_mode=True)
    assert not (tmp_path / "merged").exists()


def test_adapter_r_that_disagrees_with_its_tensors_is_refused(llmtune, adapter, tmp_path):
    ad = adapter_copy(adapter, tmp_path, r=8)
    for args in (["infer", "--model", MODELS / "qwen2", "--prompt", "hi"], ["merge", "--output", tmp_path / "m"]):
        r = llmtune(*args, "--adapter", ad, "--json")
        assert_clean_failure(r, ("adapter_config.json", "r = 8", "lora_A.weight", "rank 4"), json_mode=True)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("change,needle", [
    ({"rank_pattern": {"(.|.)*[#%]": 4}}, "rank_pattern key '(.|.)*[#%]' backtracks without end"),
    ({"alpha_pattern": {"(.|.)*[#%]": 16}}, "alpha_pattern key '(.|.)*[#%]' backtracks without end"),
    ({"rank_pattern": {"(" * 50000 + "q_proj" + ")" * 50000: 4}}, "rank_pattern key '((("),
    ({"rank_pattern": {"(" * 1000 + "q_proj" + ")" * 1000: 4}}, "too deeply nested"),
    ({"layers_to_transform": [0], "layers_pattern": "lay(ers"}, "layers_pattern 'lay(ers' is not a valid regular expression"),
])
def test_hostile_adapter_patterns_fail_fast(llmtune, adapter, tmp_path, change, needle):
    # Regexes from a downloaded adapter_config.json: std::regex hung on the first and overflowed the
    # stack (segfault) on the third.
    ad = adapter_copy(adapter, tmp_path, **change)
    for args in (["infer", "--model", MODELS / "qwen2", "--prompt", "hi"], ["merge", "--output", tmp_path / "m"]):
        t0 = time.monotonic()
        r = llmtune(*args, "--adapter", ad, "--json", timeout=60)
        assert time.monotonic() - t0 < 30
        assert_clean_failure(r, ("adapter_config.json", needle), code=1, json_mode=True)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", ["infer", "eval", "merge", "quantize"])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_wrong_adapter_path_is_called_an_adapter(llmtune, tmp_path, command, kind):
    ad = tmp_path / "ad"
    if kind == "file":
        ad.write_text("x")
    args = {"infer": ["--model", MODELS / "qwen2", "--prompt", "hi"], "eval": ["--model", MODELS / "qwen2", "--data", data_file(tmp_path)],
            "merge": ["--output", tmp_path / "m"], "quantize": ["--model", MODELS / "qwen2", "--output", tmp_path / "q.gguf", "--type", "f16"]}[command]
    r = llmtune(command, *args, "--adapter", ad, "--json")
    assert_clean_failure(r, (str(ad), "adapter"), json_mode=True)
    assert "model not found" not in r.err and "model directory" not in r.err
    assert not (tmp_path / "m").exists() and not (tmp_path / "q.gguf").exists()


@pytest.mark.parametrize("damage,needle", [
    ("config_not_json", "adapter_config.json"), ("no_weights", "adapter_model.safetensors"),
    ("pickle_only", "pickled"), ("peft_type", "peft_type"), ("r_zero", "r must be"), ("alpha_string", "'lora_alpha' must be a number"),
    ("weights_garbage", "adapter_model.safetensors"), ("foreign_key", "does not start with"),
])
def test_damaged_adapters_are_named(llmtune, adapter, tmp_path, damage, needle):
    ad = adapter_copy(adapter, tmp_path)
    config = json.loads((ad / "adapter_config.json").read_text())
    if damage == "config_not_json":
        (ad / "adapter_config.json").write_text("{nope")
    elif damage == "no_weights":
        (ad / "adapter_model.safetensors").unlink()
    elif damage == "pickle_only":
        (ad / "adapter_model.safetensors").rename(ad / "adapter_model.bin")
    elif damage in ("peft_type", "r_zero", "alpha_string"):
        config.update({"peft_type": {"peft_type": "PROMPT_TUNING"}, "r_zero": {"r": 0},
                       "alpha_string": {"lora_alpha": "big"}}[damage])
        (ad / "adapter_config.json").write_text(json.dumps(config))
    elif damage == "weights_garbage":
        (ad / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}!!")
    else:
        import safetensors.torch as st
        tensors = st.load_file(ad / "adapter_model.safetensors")
        tensors["something.else.weight"] = next(iter(tensors.values())).clone()
        st.save_file(tensors, ad / "adapter_model.safetensors", metadata={"format": "pt"})
    r = llmtune("infer", "--model", MODELS / "qwen2", "--adapter", ad, "--prompt", "hi", "--json")
    assert_clean_failure(r, needle, json_mode=True)


def test_an_adapter_for_another_base_is_refused_before_writing(llmtune, adapter, tmp_path):
    out = tmp_path / "merged"
    r = llmtune("merge", "--model", MODELS / "gemma", "--adapter", adapter, "--output", out, "--json")
    assert_clean_failure(r, "adapter_model.safetensors", json_mode=True)
    assert not out.exists() and not hidden_leftovers(tmp_path)


# ---------------------------------------------------------------------------------------------
# GGUF files.

@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "m.gguf"
    proc = subprocess.run([str(BIN), "quantize", "--model", str(MODELS / "qwen2"), "--output", str(out), "--type", "f16"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("damage", ["truncated", "magic", "tensor_count", "empty"])
def test_damaged_gguf_files_are_named(llmtune, gguf, tmp_path, damage):
    bad = tmp_path / "bad.gguf"
    blob = gguf.read_bytes()
    bad.write_bytes({"truncated": blob[: len(blob) // 3], "magic": b"GGUX" + blob[4:],
                     "tensor_count": blob[:8] + struct.pack("<Q", 1 << 60) + blob[16:], "empty": b""}[damage])
    r = llmtune("infer", "--model", bad, "--prompt", "hi", "--json")
    assert_clean_failure(r, "bad.gguf", json_mode=True)


def test_a_missing_gguf_file_is_named(llmtune, tmp_path):
    r = llmtune("eval", "--model", tmp_path / "nope.gguf", "--data", data_file(tmp_path), "--json")
    assert_clean_failure(r, "nope.gguf", json_mode=True)


# ---------------------------------------------------------------------------------------------
# Outputs.

def test_quantize_with_bad_eval_data_writes_nothing_and_the_rerun_works(llmtune, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "fine"}', "{broken"])
    out = tmp_path / "q.gguf"
    r = llmtune("quantize", "--model", MODELS / "qwen2", "--output", out, "--type", "f16", "--eval-data", bad, "--json")
    assert_clean_failure(r, f"{bad}:2", json_mode=True)
    assert not out.exists() and not hidden_leftovers(tmp_path)
    good = data_file(tmp_path, "good.jsonl")
    r = llmtune("quantize", "--model", MODELS / "qwen2", "--output", out, "--type", "f16", "--eval-data", good,
                "--max-seq-len", 16, "--json")
    assert r.code == 0, r.err[-2000:]
    assert out.exists() and json.loads(r.out)["gguf_perplexity"] > 0


@pytest.mark.parametrize("case,needle", [("directory", "is a directory"), ("parent_is_a_file", "is a file"),
                                         ("exists", "already exists"), ("not_gguf", "does not end in .gguf")])
def test_quantize_output_problems_are_refused_up_front(llmtune, tmp_path, case, needle):
    out = {"directory": tmp_path / "dir.gguf", "parent_is_a_file": tmp_path / "f" / "sub" / "q.gguf",
           "exists": tmp_path / "q.gguf", "not_gguf": tmp_path / "q.bin"}[case]
    if case == "directory":
        out.mkdir()
    if case == "parent_is_a_file":
        (tmp_path / "f").write_text("a file")
    if case == "exists":
        out.write_text("keep me")
    r = llmtune("quantize", "--model", MODELS / "qwen2", "--output", out, "--type", "q8_0", "--json")
    assert_clean_failure(r, needle, code=2, json_mode=True)
    if case == "exists":
        assert out.read_text() == "keep me"
    assert not hidden_leftovers(tmp_path)


@pytest.mark.parametrize("case,needle", [("directory", "is a directory"), ("no_parent", "does not exist"),
                                         ("same_as_input", "prompts file itself")])
def test_infer_output_problems_are_refused_before_loading(llmtune, tmp_path, case, needle):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    out = {"directory": tmp_path / "o.jsonl", "no_parent": tmp_path / "nope" / "o.jsonl", "same_as_input": prompts}[case]
    if case == "directory":
        out.mkdir()
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", out, "--json")
    assert_clean_failure(r, ("--output", needle), code=2, json_mode=True)
    assert prompts.read_text() == json.dumps({"prompt": "hi"}) + "\n"


@pytest.mark.parametrize("case,needle", [("exists", "already exists"), ("inside_adapter", "would overwrite")])
def test_merge_output_problems_are_refused(llmtune, adapter, tmp_path, case, needle):
    out = tmp_path / "merged" if case == "exists" else adapter / "merged"
    if case == "exists":
        out.mkdir()
        (out / "keep").write_text("me")
    r = llmtune("merge", "--adapter", adapter, "--output", out, "--json")
    assert_clean_failure(r, needle, code=2, json_mode=True)
    assert not (adapter / "merged").exists()
    if case == "exists":
        assert (out / "keep").read_text() == "me"


def test_output_of_infer_with_a_single_prompt_is_refused(llmtune, tmp_path):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", "--output", tmp_path / "o.jsonl", "--json")
    assert_clean_failure(r, "--output", code=2, json_mode=True)


# ---------------------------------------------------------------------------------------------
# Signals and leftovers.

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_infer_leaves_no_temporary(tmp_path, sig):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"tell me about {i}"} for i in range(5000)])
    out = tmp_path / "o.jsonl"
    proc = subprocess.Popen([str(BIN), "infer", "--model", str(MODELS / "qwen2"), "--prompts-file", str(prompts), "--output",
                             str(out), "--max-new-tokens", "20"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, preexec_fn=_limit_memory)
    deadline = time.monotonic() + 60
    while not hidden_leftovers(tmp_path) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert hidden_leftovers(tmp_path), "the temporary output never appeared"
    time.sleep(0.5)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode == -sig, proc.returncode
    assert not hidden_leftovers(tmp_path) and not out.exists()


def test_a_stale_temporary_of_the_output_is_removed_on_the_next_run(llmtune, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    stale = tmp_path / ".o.jsonl.tmp-999999-0"  # a pid that no longer runs (kill -9)
    stale.write_text("half")
    live = tmp_path / f".o.jsonl.tmp-{os.getpid()}-0"  # a writer that still runs: left alone
    live.write_text("busy")
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", tmp_path / "o.jsonl",
                "--max-new-tokens", 2, "--json")
    assert r.code == 0, r.err[-2000:]
    assert json.loads(r.out) == {"output": str(tmp_path / "o.jsonl"), "completions": 1}  # one report, once written
    assert not stale.exists() and live.exists()
    assert any("removed" in l and stale.name in l for l in r.err_lines), r.err
