"""No flag is silently ignored: the shared options a command does not use (--seed, --device, --dtype)
are refused with the reason, infer's --system/--raw clash is refused, a .jinja data template works
in eval and finetune as in tokenize, and the chat template a finetune saves next to its adapter is the
one infer and eval use with that adapter."""
import json
import os
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"
ROOT = Path(os.environ.get("LLMTUNE_SOURCE_DIR", Path(__file__).resolve().parents[2]))

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
]


def named_template(name):
    """A named template's source as shipped in the binary (read from src/data/templates.cpp)."""
    src = (ROOT / "src" / "data" / "templates.cpp").read_text(encoding="utf-8")
    var = {"alpaca": "kAlpaca", "chatml": "kChatml", "zephyr": "kZephyr"}[name]
    start = src.index(f'const char* {var} = R"JINJA(') + len(f'const char* {var} = R"JINJA(')
    return src[start:src.index(')JINJA"', start)]


@pytest.fixture
def chat_data(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS), encoding="utf-8")
    return path


def make_adapter(base, out, seed=3):
    """A PEFT adapter with nonzero A and B, saved by PEFT itself."""
    import peft
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False, task_type="CAUSAL_LM"))
    pm.save_pretrained(out)
    return out


# --seed / --device / --dtype where they would do nothing

@pytest.mark.parametrize("command,flag,args", [
    ("eval", "--seed", []),
    ("env", "--seed", []),
    ("merge", "--seed", ["--adapter", "nowhere"]),
    ("merge", "--device", ["--adapter", "nowhere"]),
    ("quantize", "--seed", []),
    ("tokenize", "--seed", ["--model", "nowhere", "--text", "hi"]),
    ("tokenize", "--device", ["--model", "nowhere", "--text", "hi"]),
    ("tokenize", "--dtype", ["--model", "nowhere", "--text", "hi"]),
])
def test_unused_shared_flags_are_refused(llmtune, command, flag, args):
    value = {"--seed": "7", "--device": "cpu", "--dtype": "fp32"}[flag]
    r = llmtune(command, flag, value, *args)
    assert r.code == 2, (r.out, r.err)
    assert f"{flag} has no effect for {command}" in r.err and len(r.err_lines) == 1, r.err
    # The key=value spelling is refused alike, and the flag is not offered in --help.
    r = llmtune(command, f"{flag[2:]}={value}", *args)
    assert r.code == 2 and f"{flag[2:]}=... has no effect for {command}" in r.err, r.err
    help_text = llmtune(command, "--help").out
    assert flag not in help_text


def test_used_shared_flags_stay_offered(llmtune):
    assert "--seed" in llmtune("infer", "--help").out and "--seed" in llmtune("finetune", "--help").out
    assert "--dtype" in llmtune("merge", "--help").out and "--device" in llmtune("eval", "--help").out


def test_quantize_device_without_eval_data_is_refused(llmtune, tmp_path):
    r = llmtune("quantize", "--model", MODELS / "llama3", "--output", tmp_path / "m.gguf", "--type", "q8_0",
                "--device", "cpu")
    assert r.code == 2 and "without --eval-data they have no effect" in r.err, r.err
    assert not (tmp_path / "m.gguf").exists()


def test_tokenize_refuses_row_options_with_text(llmtune, chat_data):
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--text", "hi", "--row", 2)
    assert r.code == 2 and "--row applies to a dataset row (--data)" in r.err, r.err
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--text", "hi", "--template", "chatml")
    assert r.code == 2 and "--template applies to a dataset row" in r.err, r.err
    r = llmtune("tokenize", "--model", MODELS / "qwen2", "--data", chat_data, "--no-special-tokens")
    assert r.code == 2 and "--no-special-tokens applies to --text" in r.err, r.err


# infer --system

def test_infer_system_with_raw_is_refused(llmtune):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", "--raw", "--system", "Be brief.")
    assert r.code == 2 and "--system has no effect with --raw" in r.err, r.err


def test_infer_sampling_settings_with_greedy_decoding_are_reported(llmtune):
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", "--max-new-tokens", 2, "--seed", 5, "--json")
    assert r.code == 0, r.err
    assert "seed has no effect with temperature 0" in r.err
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompt", "hi", "--max-new-tokens", 2, "--json")
    assert r.code == 0 and "has no effect" not in r.err, r.err


def test_infer_system_reaches_prompts_file_conversations(llmtune, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODELS / "qwen2")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    r = llmtune("infer", "--model", MODELS / "qwen2", "--prompts-file", prompts, "--output", out, "--system", "Be brief.",
                "--max-new-tokens", 1)
    assert r.code == 0, r.err
    ids = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert json.loads(out.read_text())["prompt_tokens"] == len(ids)


# data.template as a .jinja file

def test_eval_template_file_equals_the_named_template(llmtune, tmp_path, chat_data):
    jinja = tmp_path / "chatml.jinja"
    jinja.write_text(named_template("chatml"), encoding="utf-8")
    args = ["eval", "--model", MODELS / "llama3", "--data", chat_data, "--json"]
    named = llmtune(*args, "--template", "chatml")
    from_file = llmtune(*args, "--template", jinja)
    assert named.code == 0 and from_file.code == 0, (named.err, from_file.err)
    assert json.loads(named.out)["loss"] == json.loads(from_file.out)["loss"]
    assert json.loads(named.out)["tokens"] == json.loads(from_file.out)["tokens"]
    r = llmtune(*args, "--template", tmp_path / "missing.jinja")
    assert r.code == 2 and "no such template file" in r.err, r.err


def test_finetune_accepts_a_template_file(llmtune, tmp_path):
    jinja = tmp_path / "alpaca.jinja"
    jinja.write_text(named_template("alpaca"), encoding="utf-8")
    config = ROOT / "configs" / "demo-lora.yaml"
    r = llmtune("finetune", config, f"data.template={jinja}", "--print-config", cwd=ROOT)
    assert r.code == 0, r.err
    assert str(jinja) in r.out
    r = llmtune("finetune", config, "data.template=vicuna", "--print-config", cwd=ROOT)
    assert r.code == 2 and "'vicuna' is not a chat template" in r.err, r.err


# the chat template saved next to an adapter

@pytest.fixture
def adapter_with_template(tmp_path):
    """An adapter for mistral (whose tokenizer has no chat template) with zephyr saved next to it, as
    finetune saves the template it trained with."""
    adapter = make_adapter(MODELS / "mistral", tmp_path / "adapter")
    (adapter / "chat_template.jinja").write_text(named_template("zephyr"), encoding="utf-8")
    return adapter


def test_infer_uses_the_template_saved_with_the_adapter(llmtune, adapter_with_template):
    from transformers import AutoTokenizer

    r = llmtune("infer", "--model", MODELS / "mistral", "--adapter", adapter_with_template, "--prompt", "Hello there!",
                "--max-new-tokens", 1, "--json")
    assert r.code == 0, r.err
    assert "saved with the adapter" in r.err and "no chat template" not in r.err
    tok = AutoTokenizer.from_pretrained(MODELS / "mistral")
    tok.chat_template = named_template("zephyr")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hello there!"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=True)["input_ids"]
    assert json.loads(r.out)["prompt_tokens"] == len(ids)


def test_eval_uses_the_template_saved_with_the_adapter(llmtune, adapter_with_template, chat_data, tmp_path):
    args = ["eval", "--model", MODELS / "mistral", "--adapter", adapter_with_template, "--data", chat_data, "--json"]
    saved = llmtune(*args)
    assert saved.code == 0, saved.err
    assert "saved with the adapter" in saved.err
    explicit = llmtune(*args, "--template", "zephyr")
    assert explicit.code == 0, explicit.err
    assert json.loads(saved.out)["loss"] == json.loads(explicit.out)["loss"]
    # A finetune run directory finds the template in its adapter/ too.
    run = tmp_path / "run"
    shutil.copytree(adapter_with_template, run / "adapter")
    from_run = llmtune("eval", "--model", MODELS / "mistral", "--adapter", run, "--data", chat_data, "--json")
    assert from_run.code == 0 and json.loads(from_run.out)["loss"] == json.loads(saved.out)["loss"], from_run.err
