"""Run tracking end to end: tb/ holds TensorBoard event files that tensorboard's own readers take
with exactly the scalars of metrics.jsonl (same tags, steps and float32 values) after a plain run, a
distillation, a kill -9 and a --resume (no step twice), and loss.svg is an SVG with one polyline per
series holding one point per logged value."""
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from test_finetune import MODELS, chat_rows, start, wait_for_step, write_jsonl

SVG = "{http://www.w3.org/2000/svg}"
EMA = 0.9  # loss.svg's smoothing factor (src/train/loss_plot.h)


def metrics_scalars(out):
    """{tag: [(step, float32 value)]} of every number (bools as 0/1) in metrics.jsonl, in file order."""
    scalars = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key == "step" or value is None:
                continue
            scalars.setdefault(key, []).append((record["step"], np.float32(float(value))))
    return scalars


def accumulator_scalars(out):
    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, np.float32(e.value)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_events(out):
    """Every event of every file in tb/, in name order, read without TensorBoard's purging."""
    events = []
    for path in sorted((out / "tb").iterdir()):
        events += list(LegacyEventFileLoader(str(path)).Load())
    return events


def raw_scalars(out):
    scalars = {}
    for e in raw_events(out):
        for v in e.summary.value:
            scalars.setdefault(v.tag, []).append((e.step, np.float32(v.simple_value)))
    return scalars


def assert_tb_equals_metrics(out):
    want = metrics_scalars(out)
    assert accumulator_scalars(out) == want
    assert raw_scalars(out) == want  # so no step twice in the files, whatever the reader
    for path in (out / "tb").iterdir():
        assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\..+\.\d+", path.name), path.name
        first = next(iter(LegacyEventFileLoader(str(path)).Load()))
        assert first.file_version == "brain.Event:2"


def polylines(out):
    """{series title: [(x, y) pixel points]} of loss.svg, checked to be XML with one polyline per title."""
    root = ET.parse(out / "loss.svg").getroot()
    assert root.tag == SVG + "svg"
    lines = {}
    for p in root.iter(SVG + "polyline"):
        title = p.find(SVG + "title").text
        assert title not in lines
        lines[title] = [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
    texts = {t.text for t in root.iter(SVG + "text")}
    assert {"step", "loss", "learning rate"} <= texts  # axis labels
    return lines


def debiased_ema(values):
    ema, weight, out = 0.0, 0.0, []
    for v in values:
        ema, weight = EMA * ema + (1 - EMA) * v, EMA * weight + (1 - EMA)
        out.append(ema / weight)
    return out


def assert_linear(pixels, values):
    """The pixel coordinates are one affine map of the values (the plot draws what was logged)."""
    assert len(pixels) == len(values)
    a, b = np.polyfit(values, pixels, 1)
    assert np.allclose(np.polyval([a, b], values), pixels, atol=0.02)


def test_finetune_with_evals_writes_the_metrics_as_tensorboard_scalars_and_a_loss_plot(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(16))
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 5,
                "data.val_fraction=0.25", "eval.every_steps=2", "train.warmup_steps=2", timeout=300)
    assert r.code == 0, r.err
    want = metrics_scalars(out)
    assert {"loss", "lr", "grad_norm", "eval_loss", "eval_perplexity", "tokens_per_second", "peak_memory_bytes"} <= want.keys()
    assert [s for s, _ in want["eval_loss"]] == [2, 4, 5]
    assert_tb_equals_metrics(out)
    assert len(list((out / "tb").iterdir())) == 1

    lines = polylines(out)
    assert lines.keys() == {"train loss", f"train loss (EMA {EMA:g})", "eval loss", "learning rate"}
    exact = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    loss64 = [j["loss"] for j in exact if "loss" in j]
    assert len(lines["train loss"]) == len(lines[f"train loss (EMA {EMA:g})"]) == len(lines["learning rate"]) == len(loss64) == 5
    assert len(lines["eval loss"]) == 3
    # One x per step, shared by every series; y a linear map of the value (loss and EMA on one axis).
    xs = [x for x, _ in lines["train loss"]]
    assert xs == sorted(xs) and xs == [x for x, _ in lines["learning rate"]]
    assert_linear([y for _, y in lines["train loss"] + lines[f"train loss (EMA {EMA:g})"] + lines["eval loss"]],
                  loss64 + debiased_ema(loss64) + [j["eval_loss"] for j in exact if "eval_loss" in j])
    assert_linear([y for _, y in lines["learning rate"]], [j["lr"] for j in exact if "lr" in j])
    assert_linear(xs, [1, 2, 3, 4, 5])


def test_distill_logs_its_loss_parts(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(8))
    out = tmp_path / "run"
    r = llmtune("distill", "--model", MODELS / "qwen2", "--teacher", MODELS / "qwen2", "--data", data, "--output", out,
                "--max-steps", 2, timeout=300)
    assert r.code == 0, r.err
    assert {"soft_loss", "ce_loss"} <= metrics_scalars(out).keys()
    assert_tb_equals_metrics(out)


def test_kill9_leaves_readable_events_and_resume_writes_each_step_once(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(24))
    out = tmp_path / "run"
    args = ["finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 10,
            "train.batch_size=2", "data.val_fraction=0.2", "eval.every_steps=2", "checkpoint.every_steps=3"]
    proc = start(args)
    assert wait_for_step(out, 5, proc)
    proc.kill()
    proc.wait()
    # The events file a kill -9 leaves: the records of metrics.jsonl (the last one may not have made it).
    want, got = metrics_scalars(out), accumulator_scalars(out)
    for tag, points in want.items():
        assert got.get(tag, []) in (points, points[:-1]), tag
    assert sum(map(len, got.values())) > 0
    # A record cut in the middle (a kill inside a write) is left out by TensorBoard's reader.
    events = next((out / "tb").iterdir())
    torn = tmp_path / "torn" / events.name
    torn.parent.mkdir()
    torn.write_bytes(events.read_bytes()[:-7])
    assert len(list(LegacyEventFileLoader(str(torn)).Load())) == len(list(LegacyEventFileLoader(str(events)).Load())) - 1
    svg_evals = len(polylines(out).get("eval loss", []))
    assert svg_evals in (len(want["eval_loss"]), len(want["eval_loss"]) - 1)  # redrawn at every eval

    # Resume from step 3: the steps after it are trained again, and appear once.
    r = llmtune(*args, "--resume", timeout=300)
    assert r.code == 0, r.err
    assert len(list((out / "tb").iterdir())) == 2
    assert_tb_equals_metrics(out)
    want = metrics_scalars(out)
    assert [s for s, _ in want["loss"]] == list(range(1, 11))
    assert [s for s, _ in want["eval_loss"]] == [2, 4, 6, 8, 10]
    lines = polylines(out)
    assert len(lines["train loss"]) == 10 and len(lines["eval loss"]) == 5


def test_a_run_finished_from_its_last_checkpoint_logs_its_final_eval_once(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(8))
    out = tmp_path / "run"
    args = ["finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 2,
            "data.val_fraction=0.25"]
    assert llmtune(*args).code == 0
    # As a kill -9 between the final checkpoint and the summary leaves it (the final eval already logged).
    (out / "summary.json").unlink()
    (out / "run.json").write_text(json.dumps({"state": "training", "step": 2, "total_steps": 2}))
    r = llmtune(*args, "--resume")
    assert r.code == 0, r.err
    assert [s for s, _ in metrics_scalars(out)["eval_loss"]] == [2]
    assert_tb_equals_metrics(out)


def test_force_starts_the_event_files_over(llmtune, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", chat_rows(4))
    out = tmp_path / "run"
    args = ["finetune", "--model", MODELS / "qwen2", "--data", data, "--output", out, "--max-steps", 1]
    assert llmtune(*args).code == 0
    assert llmtune(*args, "--force").code == 0
    assert len(list((out / "tb").iterdir())) == 1
    assert_tb_equals_metrics(out)
