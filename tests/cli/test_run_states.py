"""Run-directory states, diverged training, non-finite weights and resources checked before they are
allocated, through the real binary (the hostile-input issue, items 3-5). Each case asserts the exit
code, a single error line naming the input, and what is left on disk."""
import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, Result

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODEL = FIXTURES / "models" / "qwen2"
MEMORY_LIMIT = 8 << 30  # address space: libtorch starts well inside it; a model of 1e9 x 1e9 does not


def errors(r):
    return [l for l in r.err_lines if l.startswith("llmtune: error:")]


def run_limited(*args, timeout=60):
    """The binary under RLIMIT_AS, so a blind allocation fails fast instead of swapping."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=timeout, preexec_fn=limit)
    return Result(proc)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Say {w}.", "output": f"{w} {w}."} for w in ("one", "two", "three", "four", "five", "six")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    return path


def finetune(llmtune, data, out, *extra):
    return llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--device", "cpu", *extra)


def state(out):
    return json.loads((out / "run.json").read_text())


def test_resuming_a_finished_run_changes_nothing(llmtune, data, tmp_path):
    out = tmp_path / "run"
    r = finetune(llmtune, data, out, "--max-steps", 2, "data.val_fraction=0.2")
    assert r.code == 0, r.err
    assert state(out)["state"] == "finished"
    before = {f: (out / f).read_bytes() for f in ("summary.json", "metrics.jsonl", "adapter/adapter_model.safetensors")}
    r = llmtune("finetune", out / "config.yaml", "--resume")
    assert r.code == 0, r.err
    assert "nothing to do" in r.err
    assert {f: (out / f).read_bytes() for f in before} == before


def test_a_run_killed_after_its_last_checkpoint_is_finished_on_resume(llmtune, data, tmp_path):
    out = tmp_path / "run"
    assert finetune(llmtune, data, out, "--max-steps", 2, "data.val_fraction=0.2").code == 0
    summary = json.loads((out / "summary.json").read_text())
    # As a kill -9 between the final checkpoint and the summary leaves it (the final eval already logged).
    (out / "summary.json").unlink()
    shutil.rmtree(out / "adapter")
    (out / "run.json").write_text(json.dumps({"state": "training", "step": 2, "total_steps": 2}))
    r = llmtune("finetune", out / "config.yaml", "--resume", "--json")
    assert r.code == 0, r.err
    resumed = json.loads(r.out)
    assert resumed["final_loss"] == pytest.approx(summary["final_loss"])
    assert resumed["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-6)
    assert resumed["tokens_per_second"] > 0 and resumed["tokens_seen"] == summary["tokens_seen"]
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if "eval_loss" in l]
    assert [e["step"] for e in evals] == [2]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert state(out)["state"] == "finished"


def test_rerunning_a_finished_run_says_how_to_replace_it(llmtune, data, tmp_path):
    out = tmp_path / "run"
    assert finetune(llmtune, data, out, "--max-steps", 1).code == 0
    r = llmtune("finetune", out / "config.yaml")
    assert r.code == 2 and len(errors(r)) == 1
    assert "finished run" in errors(r)[0] and "--force" in errors(r)[0]


def test_diverged_training_stops_and_keeps_the_last_good_checkpoint(llmtune, data, tmp_path):
    out = tmp_path / "run"
    r = finetune(llmtune, data, out, "--max-steps", 6, "train.lr=1e30", "train.max_grad_norm=0", "checkpoint.every_steps=1")
    assert r.code == 1, r.err
    assert len(errors(r)) == 1 and "diverged" in errors(r)[0], r.err
    assert "checkpoints/step-1" in errors(r)[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    assert json.loads((out / "checkpoints" / "step-1" / "state.json").read_text())["step"] == 1
    assert not (out / "adapter").exists() and not (out / "summary.json").exists()
    st = state(out)
    assert st["state"] == "failed" and st["step"] == 1 and "diverged" in st["error"]
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 1  # the diverged step is not logged as if it had trained
    # (Step 1's update already made the weights huge: this run is restarted, not continued.)
    r = llmtune("finetune", out / "config.yaml", "--force", "train.lr=1e-4")
    assert r.code == 0, r.err
    assert state(out)["state"] == "finished" and state(out)["step"] == 6


def test_a_run_that_failed_before_its_first_checkpoint_restarts(llmtune, data, tmp_path):
    out = tmp_path / "run"
    r = finetune(llmtune, data, out, "--max-steps", 4, "train.lr=1e30", "train.max_grad_norm=0")
    assert r.code == 1 and "no checkpoint was written yet" in errors(r)[0]
    assert state(out)["state"] == "failed" and not (out / "checkpoints").exists()
    r = llmtune("finetune", out / "config.yaml")
    assert r.code == 2 and "stopped before its first checkpoint" in errors(r)[0] and "--force" in errors(r)[0]
    r = llmtune("finetune", out / "config.yaml", "--resume", "train.lr=1e-4")
    assert r.code == 0, r.err
    assert "starting it again from step 0" in r.err
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]


def test_fp16_training_that_overflows_for_good_stops_at_the_loss_scale_floor(llmtune, data, tmp_path):
    # fp16's loss scaler skips inf/nan steps, halving the scale; an overflow with the scale at its
    # floor (1) is a divergence, not one more skip: step 1 applied, 16 skipped (65536 -> 1), step 18
    # stops. Without the floor this run skipped all 1000 steps and exited 0.
    out = tmp_path / "run"
    r = finetune(llmtune, data, out, "--dtype", "fp16", "--max-steps", 1000, "train.lr=1e30", "train.max_grad_norm=0",
                 "checkpoint.every_steps=10")
    assert r.code == 1, r.err
    assert len(errors(r)) == 1 and "step 18: the loss is NaN" in errors(r)[0] and "diverged" in errors(r)[0], r.err
    assert "checkpoints/step-10" in errors(r)[0]
    st = state(out)
    assert st["state"] == "failed" and st["step"] == 17 and "diverged" in st["error"]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["skipped"] for rec in records] == [False] + [True] * 16
    assert records[-1]["loss_scale"] == 1
    assert not (out / "adapter").exists() and not (out / "summary.json").exists()


def test_force_starts_over_and_excludes_resume(llmtune, data, tmp_path):
    out = tmp_path / "run"
    assert finetune(llmtune, data, out, "--max-steps", 3, "checkpoint.every_steps=1", "checkpoint.keep=0").code == 0
    (out / "notes.txt").write_text("mine")
    r = llmtune("finetune", out / "config.yaml", "--force", "train.max_steps=1")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files go
    r = llmtune("finetune", out / "config.yaml", "--force", "--resume")
    assert r.code == 2 and len(errors(r)) == 1 and "--force" in errors(r)[0]


def test_half_pruned_checkpoints_are_removed_on_the_next_run(llmtune, data, tmp_path):
    out = tmp_path / "run"
    r = finetune(llmtune, data, out, "--max-steps", 3, "checkpoint.every_steps=1", "checkpoint.keep=1")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]
    # What a kill during pruning leaves: the old step renamed aside, partly deleted.
    leftover = out / "checkpoints" / ".step-2.old-4242"
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"partial")
    r = llmtune("finetune", out / "config.yaml", "--resume", "train.max_steps=4")
    assert r.code == 0, r.err
    assert not leftover.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]


def test_an_output_that_is_a_file_is_refused(llmtune, data, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    r = finetune(llmtune, data, out, "--max-steps", 1)
    assert r.code == 2 and len(errors(r)) == 1 and "is a file" in errors(r)[0]
    assert out.read_text() == "not a directory"


def model_with(tmp_path, **changes):
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    config = json.loads((model / "config.json").read_text())
    config.update(changes)
    config.pop("layer_types", None)
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("key,value", [("hidden_size", 10**9), ("vocab_size", 2 * 10**9), ("intermediate_size", 10**9)])
def test_a_random_init_beyond_memory_is_refused_before_allocating(tmp_path, data, key, value):
    model = model_with(tmp_path, **{key: value})
    out = tmp_path / "run"
    r = run_limited("finetune", "--model", model, "--data", data, "--output", out, "--max-steps", 1, "--device", "cpu",
                    "model.init=random", "method=full")
    assert r.code == 2, r.err[-2000:]
    assert len(errors(r)) == 1 and "config.json" in errors(r)[0] and "needs about" in errors(r)[0], r.err
    assert not out.exists()


@pytest.mark.parametrize("changes,needle", [
    ({"rope_theta": -1}, "'rope_theta' is -1"),
    ({"rms_norm_eps": -1e-6}, "'rms_norm_eps'"),
    ({"num_hidden_layers": 10**7}, "'num_hidden_layers' is 10000000"),
    ({"num_attention_heads": 1024, "num_key_value_heads": 1024}, "smaller than num_attention_heads"),
    ({"max_position_embeddings": 0}, "'max_position_embeddings'"),
])
def test_impossible_config_values_are_refused(llmtune, data, tmp_path, changes, needle):
    model = model_with(tmp_path, **changes)
    r = llmtune("eval", "--model", model, "--data", data, "--device", "cpu")
    assert r.code in (1, 2) and len(errors(r)) == 1, r.err
    assert needle in errors(r)[0] and "config.json" in errors(r)[0], errors(r)


def test_a_kv_cache_beyond_memory_is_refused(tmp_path):
    model = model_with(tmp_path, max_position_embeddings=2**31)
    r = run_limited("infer", "--model", model, "--prompt", "hello", "--max-new-tokens", 2_000_000_000, "--device", "cpu")
    assert r.code == 2, r.err[-2000:]
    assert len(errors(r)) == 1 and "KV cache" in errors(r)[0] and "--max-new-tokens" in errors(r)[0], r.err




def test_non_finite_adapter_weights_are_named(llmtune, data, tmp_path):
    out = tmp_path / "run"
    assert finetune(llmtune, data, out, "--max-steps", 1).code == 0
    from safetensors.torch import load_file, save_file
    path = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    r = llmtune("eval", "--model", MODEL, "--adapter", out / "adapter", "--data", data, "--device", "cpu")
    warnings = [l for l in r.err_lines if "NaN or infinite" in l]
    assert len(warnings) == 1 and name in warnings[0] and "adapter_model.safetensors" in warnings[0], r.err


def test_non_finite_adapters_are_refused_on_request_and_named_by_merge(llmtune, data, tmp_path):
    out = tmp_path / "run"
    assert finetune(llmtune, data, out, "--max-steps", 1).code == 0
    from safetensors.torch import load_file, save_file
    path = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[-1]
    tensors[name][0, 0] = float("inf")
    save_file(tensors, str(path), metadata={"format": "pt"})
    for command in (["eval", "--data", data], ["infer", "--prompt", "hi", "--max-new-tokens", 2]):
        r = llmtune(command[0], "--model", MODEL, "--adapter", out / "adapter", *command[1:], "--device", "cpu",
                    "--refuse-non-finite", "--json")
        errors_ = errors(r)
        assert r.code == 1 and len(errors_) == 1 and name in errors_[0], (command, r.err)
        assert r.out == ""
    merged = tmp_path / "merged"
    r = llmtune("merge", "--model", MODEL, "--adapter", out / "adapter", "--output", merged, "--refuse-non-finite")
    assert r.code == 1 and name in errors(r)[0] and not merged.exists(), r.err
    r = llmtune("merge", "--model", MODEL, "--adapter", out / "adapter", "--output", merged)
    assert any("NaN or infinite" in l and name in l for l in r.err_lines), r.err


def test_a_base_holding_nan_is_named_before_training_and_blamed_for_the_nan_loss(llmtune, data, tmp_path):
    from safetensors.torch import load_file, save_file
    base = tmp_path / "base"
    shutil.copytree(MODEL, base)
    tensors = load_file(str(base / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name][2, 3] = float("nan")
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    r = llmtune("finetune", "--model", base, "--data", data, "--output", tmp_path / "run", "--max-steps", 2, "--device", "cpu")
    assert r.code == 1, r.err
    warnings = [l for l in r.err_lines if "NaN or infinite" in l and "warning:" in l]
    assert len(warnings) == 1 and f"'{name}' (1 of" in warnings[0], r.err
    assert len(errors(r)) == 1 and "of the base model" in errors(r)[0] and "train.lr" not in errors(r)[0], r.err


def test_examples_beyond_the_context_are_warned_about(llmtune, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": " ".join(["word"] * 600)}) + "\n")
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", tmp_path / "run", "--max-steps", 1,
                "--device", "cpu", "data.max_seq_len=1024")
    assert r.code == 0, r.err
    assert any("past the model's context" in l and "max_position_embeddings" in l for l in r.err_lines), r.err
