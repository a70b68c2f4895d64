"""`llmtune validate`: every problem of crafted bad inputs in one run (exit 2, listed by --json too),
statistics equal to an independent count (transformers' tokenizer on the same rows), and exit 0 on
every finetune/distill preset in configs/ with the bundled demo model substituted for hub models."""
import json
import math
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from conftest import BIN, ROOT

DEMO = ROOT / "demo" / "model"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")


def words(rng, n):
    return " ".join(rng.choice(["red", "blue", "apple", "seven", "river", "stone", "quick", "light"]) for _ in range(n))


def validate(llmtune, *args, cwd=ROOT):
    r = llmtune("validate", *args, cwd=cwd)
    j = llmtune("validate", *args, "--json", cwd=cwd)
    assert r.code == j.code, (r.out, j.out)
    return r, json.loads(j.out)


def model_with_wider_mlp(tmp_path, keep_tokenizer):
    """A copy of the demo model whose config.json says intermediate_size is twice what its weights hold."""
    m = tmp_path / ("model-tok" if keep_tokenizer else "model-notok")
    shutil.copytree(DEMO, m)
    if not keep_tokenizer:
        for f in TOKENIZER_FILES:
            (m / f).unlink()
    cfg = json.loads((m / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (m / "config.json").write_text(json.dumps(cfg))
    return m, cfg


def test_every_problem_of_bad_inputs_in_one_run(llmtune, tmp_path):
    rng = random.Random(0)
    # Lines 1 and 4: no assistant message (nothing to train); line 3: not JSON; 2 and 5: longer than max_seq_len.
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": words(rng, 20)}, {"role": "assistant", "content": words(rng, 20)}]},
        "{not json",
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": [{"role": "user", "content": words(rng, 30)}, {"role": "assistant", "content": words(rng, 30)}]},
    ])
    out = tmp_path / "out"
    config = tmp_path / "bad.yaml"
    config.write_text(f"""model:
  path: {tmp_path / 'model-notok'}
output: {out}
method: lora
lora:
  rr: 8
data:
  path: {data}
  max_seq_len: 16
  truncation: drop
""")
    no_tok, cfg = model_with_wider_mlp(tmp_path, keep_tokenizer=False)
    with_tok, _ = model_with_wider_mlp(tmp_path, keep_tokenizer=True)
    # The shapes config.json implies vs those in the file's header, found independently.
    with safe_open(str(DEMO / "model.safetensors"), "pt") as f:
        stored = {n: list(f.get_slice(n).get_shape()) for n in f.keys()}
    inter = cfg["intermediate_size"]
    expected_bad = {n: s for n, s in stored.items() if "mlp" in n}
    want = {n: ([inter, s[1]] if "down_proj" not in n else [s[0], inter]) for n, s in expected_bad.items()}
    assert len(expected_bad) == 3 * cfg["num_hidden_layers"]

    # Run 1: a misspelled key, no tokenizer, shapes that config.json does not imply, a malformed row.
    r, j = validate(llmtune, config)
    assert r.code == 2 and j["ok"] is False
    problems = j["problems"]
    assert any(p.startswith(f"{config}:6: unknown key 'lora.rr'") and "did you mean 'lora.r'" in p for p in problems)
    assert any(str(no_tok) in p and "tokenizer" in p for p in problems)
    assert any(p.startswith(f"{data}:3: not valid JSON") for p in problems)
    mism = {m["name"]: (m["shape"], m["expected"]) for m in j["model"]["weights"]["mismatched"]}
    assert mism == {n: (expected_bad[n], want[n]) for n in expected_bad}
    assert any("'model.layers.0.mlp.gate_proj.weight' has shape " + str(expected_bad["model.layers.0.mlp.gate_proj.weight"])
               in p for p in problems)
    assert j["tokenizer"] is None and j["data"]["rows"] == 5
    # The human report: the same problems, one line each, and the count as its last line.
    lines = r.out.splitlines()
    assert lines[-1] == f"{len(problems)} problems"
    for p in problems:
        assert f"  - {p}" in lines

    # Run 2: the tokenizer present; now the rows are tokenized: nothing to train on lines 1 and 4,
    # every other row longer than max_seq_len with truncation drop.
    r, j = validate(llmtune, config, f"model.path={with_tok}")
    assert r.code == 2
    problems = j["problems"]
    assert any(f"{config}:6: unknown key 'lora.rr'" in p for p in problems)
    assert len(j["model"]["weights"]["mismatched"]) == len(expected_bad)
    assert any(p.startswith(f"{data}:1, 4 (2 rows): the row has no token to train on") for p in problems)
    assert any(p.startswith(f"{data}:3: not valid JSON") for p in problems)
    assert any(p.startswith(f"{data}:2, 5: all 2 rows with tokens to train are lost at data.max_seq_len 16 (2 longer than it")
               for p in problems)
    counts = j["data"]["files"][0]
    assert (counts["rows"], counts["dropped_too_long"], counts["no_trained_token"], counts["bad"], counts["kept"]) == (5, 2, 2, 1, 0)
    assert r.out.splitlines()[-1] == f"{len(problems)} problems"
    assert not out.exists(), "validate must not create the output directory"


def test_statistics_equal_an_independent_count(llmtune, tmp_path):
    from transformers import AutoTokenizer

    rng = random.Random(1)
    rows = [{"messages": [{"role": "user", "content": words(rng, rng.randint(1, 4))},
                          {"role": "assistant", "content": words(rng, rng.randint(2, 40))}]} for _ in range(40)]
    data, val = tmp_path / "chat.jsonl", tmp_path / "val.jsonl"
    write_jsonl(data, rows)
    write_jsonl(val, rows[:3])
    L, B, epochs = 48, 1, 2
    out = tmp_path / "out"
    r, j = validate(llmtune, "--command", "finetune", f"model.path={DEMO}", f"data.path={data}", f"output={out}",
                    f"data.max_seq_len={L}", "data.packing=false", f"train.batch_size={B}", f"train.epochs={epochs}",
                    f"data.val_path={val}", "device=cpu")
    assert r.code == 0, r.out
    assert r.out.splitlines()[-1] == "ok: a run would start"

    tok = AutoTokenizer.from_pretrained(str(DEMO))
    lengths = [len(tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]) for row in rows]
    t = j["data"]["tokens_per_row"]
    assert (t["rows"], t["min"], t["max"]) == (len(rows), min(lengths), max(lengths))
    assert t["mean"] == pytest.approx(sum(lengths) / len(rows))
    edges = [0, L // 4, L // 2, 3 * L // 4, L]
    hist = [sum(edges[k] < n <= edges[k + 1] for n in lengths) for k in range(4)] + [sum(n > L for n in lengths)]
    assert [b["rows"] for b in t["histogram"]] == hist
    assert hist[-1] > 0 and hist[1] + hist[2] > 0, "the rows should spread over several buckets"
    counts = j["data"]["files"][0]
    assert counts["truncated"] == sum(n > L for n in lengths) and counts["kept"] == sum(n <= L for n in lengths)
    assert j["data"]["examples"] == {"train": len(rows), "val": 3}
    # Unpacked, one row per batch: each batch is its example (truncated) padded to a multiple of 8.
    s = j["steps"]
    assert s["batches_per_epoch"] == math.ceil(len(rows) / B) and s["optimizer_steps"] == epochs * math.ceil(len(rows) / B)
    real = sum(min(n, L) for n in lengths)
    slots = sum(-(-min(n, L) // 8) * 8 for n in lengths)
    p = j["packing"]
    assert (p["real_tokens"], p["token_slots"]) == (real, slots)
    assert p["padding_fraction"] == pytest.approx(1 - real / slots)
    assert s["tokens"] == epochs * real
    m = j["memory"]
    assert m["fits"] and m["total_bytes"] == pytest.approx(m["weights_bytes"] + m["activations_bytes"] + m["logits_bytes"])
    assert not out.exists()


def preset_command(path):
    text = path.read_text()
    doc = yaml.safe_load(text) or {}
    first = text.splitlines()[0].split()
    return doc.get("command") or (first[2] if len(first) > 2 and first[1] == "llmtune" else None), doc


PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory):
    """A LoRA adapter of the demo model (one step of the demo-lora preset), for configs naming runs/demo-lora."""
    run = tmp_path_factory.mktemp("demo-lora") / "run"
    r = subprocess.run([str(BIN), "finetune", str(ROOT / "configs" / "demo-lora.yaml"), f"output={run}", "train.max_steps=1",
                        "eval.every_steps=0", "device=cpu"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return run / "adapter"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_validate_passes_every_preset(llmtune, tmp_path, preset, demo_adapter):
    command, doc = preset_command(preset)
    out = tmp_path / "out"
    args = [] if command in ("serve", "env") else [f"output={out}"]
    if command in ("prune", "quantize", "eval", "serve", "env"):
        # Flat keys: a hub model, missing data and the demo adapter (trained by the demo-lora preset) substituted.
        if doc.get("model") and not (ROOT / doc["model"]).exists():
            args.append(f"model={DEMO}")
        for key in ("calibration", "eval_data", "data"):
            if doc.get(key) and not (ROOT / doc[key]).is_file():
                args.append(f"{key}=demo/data/pretrain.jsonl")
        if doc.get("adapters"):
            names = [a.split("=", 1)[0] for a in doc["adapters"]]
            args.append("adapters=[" + ", ".join(f"{n}={demo_adapter}" for n in names) + "]")
        r = llmtune("validate", preset, *args, cwd=ROOT)
        assert r.code == 0, r.out + r.err
        assert r.out.splitlines()[-1] == "ok: a run would start"
        assert not out.exists()
        return
    # Hub models are not on a CI machine: the bundled demo model stands in (and its data for data that is not there).
    for key in ("model.path", "teacher.path"):
        section, name = key.split(".")
        value = (doc.get(section) or {}).get(name)
        if value and not (ROOT / value).is_dir():
            args.append(f"{key}={DEMO}")
    data = doc.get("data") or {}
    if not (ROOT / str(data.get("path", ""))).is_file():
        args.append("data.path=demo/data/" + ("pretrain.jsonl" if data.get("format") == "text" else "train.jsonl"))
    if data.get("val_path") and not (ROOT / data["val_path"]).is_file():
        args.append("data.val_path=demo/data/val.jsonl")
    r = llmtune("validate", preset, *args, cwd=ROOT)
    assert r.code == 0, r.out + r.err
    assert r.out.splitlines()[-1] == "ok: a run would start"
    assert not out.exists()


def test_cross_key_problems_are_reported_with_the_rest(llmtune, tmp_path):
    out = tmp_path / "out"
    base = [f"model.path={DEMO}", "data.path=demo/data/train.jsonl", f"output={out}", "data.max_seq_len=128"]
    # Random init is for full training: weights are not read, the run would start.
    r, j = validate(llmtune, "--command", "finetune", *base, "method=full", "model.init=random")
    assert r.code == 0, r.out
    assert j["model"]["weights"].startswith("not read") and j["steps"]["optimizer_steps"] > 0
    # qlora quantizes pretrained weights: refused, and the data is still checked and a typo still found.
    r, j = validate(llmtune, "--command", "finetune", *base, "method=qlora", "model.init=random", "data.max_seq_lne=64")
    assert r.code == 2
    assert any("does not go with model.init: random" in p for p in j["problems"])
    assert any(p.startswith("command line 'data.max_seq_lne=64': unknown key") for p in j["problems"])
    assert j["data"]["files"][0]["rows"] == 2000
    # full.freeze: a pattern that matches no weight.
    r, j = validate(llmtune, "--command", "finetune", *base, "method=full", "full.freeze=[no_such_weight]")
    assert r.code == 2 and any(p.startswith("full.freeze: 'no_such_weight' matches no weight") for p in j["problems"])
    # distill: a teacher that is not there.
    r, j = validate(llmtune, *base, "teacher.path=/nonexistent/teacher")
    assert r.code == 2 and j["command"] == "distill"
    assert sum("/nonexistent/teacher" in p for p in j["problems"]) == 1
    assert not out.exists()


FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", ROOT / "build" / "fixtures")) / "models"
FAMILIES = sorted(p.name for p in FIXTURES.glob("*") if (p / "config.json").is_file())


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_of_every_family_check_clean(llmtune, tmp_path, family):
    """The expected-tensor table (names, shapes, GPT-2's transposed Conv1D, tied heads, biases) fits
    every family's transformers-written checkpoint: every tensor in the file checked, none flagged."""
    model = FIXTURES / family
    r = llmtune("validate", "--command", "finetune", f"model.path={model}", "data.path=demo/data/train.jsonl",
                f"output={tmp_path / 'out'}", "data.template=chatml", "data.max_seq_len=128", "--json", cwd=ROOT)
    j = json.loads(r.out)
    w = j["model"]["weights"]
    with safe_open(str(model / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    assert (w["missing"], w["mismatched"], w["unexpected"]) == ([], [], [])
    assert w["checked"] == len(stored) == w["tensors"]
    assert r.code == 0 and j["ok"], j["problems"]


def test_prune_calibration_counts_equal_an_independent_count(llmtune, tmp_path):
    """Rows and tokens of the calibration text as transformers' tokenizer counts them (BOS per row, as
    prune reads it), the windows it would cut, and the output path's state."""
    from transformers import AutoTokenizer

    rng = random.Random(2)
    texts = [words(rng, rng.randint(3, 60)) for _ in range(30)]
    calib = tmp_path / "calib.jsonl"
    write_jsonl(calib, [{"text": t} for t in texts])
    tok = AutoTokenizer.from_pretrained(str(DEMO))
    tokens = sum(len(tok(t)["input_ids"]) for t in texts)
    out = tmp_path / "pruned"
    args = ["--command", "prune", f"model={DEMO}", f"output={out}", "method=wanda", f"calibration={calib}",
            "calibration_samples=200", "seq_len=32", f"eval_data={calib}", "eval_max_seq_len=16"]
    r, j = validate(llmtune, *args)
    assert r.code == 0, r.out
    c, e = j["data"]
    assert (c["key"], c["rows"], c["tokens"], c["seq_len"], c["windows"]) == ("calibration", 30, tokens, 32, 200)
    assert c["distinct_windows"] == tokens // 32
    assert any("overlap" in w for w in j["warnings"]), "200 windows of 32 tokens do not fit without overlap"
    assert (e["key"], e["rows"], e["tokens"]) == ("eval_data", 30, tokens)
    assert j["output"] == {"path": str(out), "exists": False, "force": False}
    # The output now exists: refused without force, as prune refuses it.
    out.mkdir()
    r, j = validate(llmtune, *args)
    assert r.code == 2 and any(p.startswith(f"{out}: the output already exists") for p in j["problems"])
    r, j = validate(llmtune, *args, "force=true")
    assert r.code == 0, r.out


def test_every_problem_of_bad_prune_quantize_eval_serve_configs(llmtune, tmp_path, demo_adapter):
    # prune: a value out of range, a key of another method, no calibration for wanda, missing evaluation
    # data, an output inside the model directory.
    bad = tmp_path / "prune.yaml"
    bad.write_text(f"""# llmtune prune
model: {DEMO}
output: {DEMO / 'pruned'}
method: wanda
sparsity: 1.5
damp: 0.1
eval_data: {tmp_path / 'missing.jsonl'}
""")
    r, j = validate(llmtune, bad)
    assert r.code == 2 and j["command"] == "prune"
    p = j["problems"]
    assert any(x.startswith(f"{bad}:5: key 'sparsity' 1.5 is outside [0, 1)") for x in p)
    assert "damp: applies to --method sparsegpt only (remove it)" in p
    assert any(x.startswith("calibration: required for --method wanda") for x in p)
    assert f"eval_data: '{tmp_path / 'missing.jsonl'}' does not exist" in p
    assert any(x.startswith(f"output: '{DEMO / 'pruned'}' would overwrite the input") for x in p)
    assert len(p) == 5 and r.out.splitlines()[-1] == "5 problems"
    assert j["model"]["weights"]["checked"] == 38

    # quantize: a GPTQ key with a GGUF type, an adapter that is not there, an existing directory as the .gguf file.
    (tmp_path / "q").mkdir()
    r, j = validate(llmtune, "--command", "quantize", f"model={DEMO}", f"output={tmp_path / 'q'}", "type=q4_0", "bits=4",
                    f"adapter={tmp_path / 'no-adapter'}")
    assert r.code == 2
    p = j["problems"]
    assert "bits: applies to --method gptq|rtn only (remove it, or set --method)" in p
    assert any(x.startswith(f"adapter: {tmp_path / 'no-adapter'}: no such adapter directory") for x in p)
    assert any(x.startswith(f"output: '{tmp_path / 'q'}' does not end in .gguf") for x in p)
    assert any(x.startswith(f"{tmp_path / 'q'}: the output already exists") for x in p)
    # gptq without calibration text; the bitsandbytes block size the exporter refuses.
    r, j = validate(llmtune, "--command", "quantize", f"model={DEMO}", f"output={tmp_path / 'g'}", "method=gptq")
    assert r.code == 2 and any(x.startswith("calibration: required for --method gptq") for x in j["problems"])
    r, j = validate(llmtune, "--command", "quantize", f"model={DEMO}", f"output={tmp_path / 'b'}", "type=nf4", "blocksize=48")
    assert r.code == 2 and any("blocksize" in x for x in j["problems"]), j["problems"]

    # eval: a model that is not there, data that is not there, a typo, a value under its minimum.
    r, j = validate(llmtune, "--command", "eval", f"model={tmp_path / 'no-model'}", f"data={tmp_path / 'none.jsonl'}",
                    "max_seq_len=1", "formatt=alpaca")
    assert r.code == 2
    p = j["problems"]
    assert any(x.startswith("command line 'max_seq_len=1'") for x in p)
    assert any(x.startswith("command line 'formatt=alpaca': unknown key") and "'format'" in x for x in p)
    assert any(x.startswith(f"{tmp_path / 'no-model'}: model not found") for x in p)
    assert f"data: '{tmp_path / 'none.jsonl'}' does not exist" in p

    # serve: an adapter made for another base (its shapes do not fit), a port out of range, two API keys.
    other = FIXTURES / "llama3"
    bad = tmp_path / "serve.yaml"
    bad.write_text(f"""# llmtune serve
model: {other}
adapters:
  - mine={demo_adapter}
port: 70000
api_key: k
api_key_file: {tmp_path / 'key'}
""")
    r, j = validate(llmtune, bad)
    assert r.code == 2 and j["command"] == "serve"
    p = j["problems"]
    assert any(x.startswith(f"{bad}:5: key 'port' must be <= 65535") for x in p)
    assert any(x.startswith("give the API key once") for x in p)
    assert any(x.startswith("adapters[mine]: ") and "adapter made for another base?" in x for x in p)
    # The same adapter over its own base: ok.
    good = tmp_path / "serve-ok.yaml"
    good.write_text(f"# llmtune serve\nmodel: {DEMO}\nadapters:\n  - mine={demo_adapter}\napi_key: k\n")
    r, j = validate(llmtune, good)
    assert r.code == 0, r.out
    assert j["adapters"][0]["modules"] == 28


def test_sweep_values_are_checked(llmtune, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    text = (ROOT / "configs" / "sweep-demo.yaml").read_text().replace("lora.r: [8, 16]", "lora.r: [8, -4]")
    sweep.write_text(text.replace("output: runs/sweep-demo", f"output: {tmp_path / 'out'}"))
    r, j = validate(llmtune, sweep, cwd=ROOT)
    assert r.code == 2
    assert j["sweep"] == {"axes": 2, "values_checked": 4}
    assert len(j["problems"]) == 1 and j["problems"][0].startswith("sweep value lora.r=-4 (")
