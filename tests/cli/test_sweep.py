"""`llmtune sweep` end to end: the run table equals an expansion computed here with itertools (grid x
paired groups x command-line axes, and the documented seeded sample); a 2x2 sweep on the bundled demo model
writes a summary (md, jsonl, csv) whose numbers are each run's summary.json / metrics.jsonl and an
eval_loss.svg with one polyline per run; a run that fails at run time is recorded and the others
finish; a sweep stopped by SIGINT, then killed with -9, resumes without repeating finished runs; bad
sweep files give exit 2 and one line each."""
import csv
import io
import itertools
import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import BIN
from test_finetune import errors

SVG = "{http://www.w3.org/2000/svg}"
MASK = (1 << 64) - 1


def write_sweep(path, text):
    path.write_text(text)
    return path


ROOT = Path(__file__).resolve().parents[2]


def base_yaml(tmp_path, out, steps=4, extra="", eval_every=2):
    """The bundled demo model (as configs/sweep-demo.yaml) on the first 16 rows of its data."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join((ROOT / "demo" / "data" / "train.jsonl").read_text().splitlines(keepends=True)[:16]))
    return f"""command: finetune
output: {out}
model:
  path: {ROOT / 'demo' / 'model'}
data:
  path: {data}
  format: alpaca
  template: alpaca
  val_fraction: 0.25
train:
  max_steps: {steps}
  batch_size: 2
eval:
  every_steps: {eval_every}
device: cpu
{extra}"""


def dry_run(llmtune, *args):
    r = llmtune("sweep", *args, "--dry-run", "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def table(j):
    return [(run["name"], run["values"]) for run in j["runs"]]


def reference(axes):
    """axes: [[(key, value), ...] per point] per axis -> [(name, values)] in product order (last fastest)."""
    lasts = [k.rsplit(".", 1)[-1] for axis in axes for k, _ in axis[0]]
    rows = []
    for combo in itertools.product(*axes):
        values = {k: v for point in combo for k, v in point}
        name = ",".join(f"{k if lasts.count(k.rsplit('.', 1)[-1]) > 1 else k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())
        rows.append((name, values))
    return rows


def mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_expansion_equals_the_product_table(llmtune, tmp_path):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", base_yaml(tmp_path, out, extra="""sweep:
  grid:
    train.lr: [1e-3, 3e-3, 1e-2]
    lora:
      r: [4, 8]
  paired:
    - {lora.alpha: [8, 16], lora.dropout: [0.0, 0.1]}
"""))
    grid_lr = [[("train.lr", v)] for v in ("1e-3", "3e-3", "1e-2")]
    grid_r = [[("lora.r", v)] for v in ("4", "8")]
    paired = [[("lora.alpha", a), ("lora.dropout", d)] for a, d in (("8", "0.0"), ("16", "0.1"))]
    warmup = [[("train.warmup_steps", v)] for v in ("0", "2")]
    # A command-line axis comes last; key=value sets a fixed key.
    j = dry_run(llmtune, sweep, "train.warmup_steps=[0, 2]", "train.max_steps=3")
    assert table(j) == reference([grid_lr, grid_r, paired, warmup])
    assert j["base"]["train.max_steps"] == "3" and j["command"] == "finetune" and j["output"] == str(out)
    assert not out.exists()  # a dry run writes nothing
    # key=[..] on a swept key replaces its values in place; key=value pins it (the axis is gone).
    j = dry_run(llmtune, sweep, "train.lr=[5e-4, 2e-3]")
    assert table(j) == reference([[[("train.lr", "5e-4")], [("train.lr", "2e-3")]], grid_r, paired])
    j = dry_run(llmtune, sweep, "train.lr=5e-4")
    assert table(j) == reference([grid_r, paired]) and j["base"]["train.lr"] == "5e-4"
    # sample: the N combinations of lowest rank mix64(seed + (i + 1) * golden), run in grid order.
    full = reference([grid_lr, grid_r, paired])
    for n, seed in ((5, 7), (3, 0)):
        j = dry_run(llmtune, sweep, f"sweep.sample={n}", f"sweep.seed={seed}")
        ranks = sorted((mix64((seed + (i + 1) * 0x9E3779B97F4A7C15) & MASK), i) for i in range(len(full)))
        assert table(j) == [full[i] for i in sorted(i for _, i in ranks[:n])]
    # Two swept keys sharing a last component keep their whole key in the name.
    j = dry_run(llmtune, sweep, "lora.r=4", "train.lr=1e-3", "eval.every_steps=[1, 2]", "checkpoint.every_steps=[3, 4]")
    evals = [[("eval.every_steps", v)] for v in ("1", "2")]
    ckpts = [[("checkpoint.every_steps", v)] for v in ("3", "4")]
    assert table(j) == reference([paired, evals, ckpts])
    assert j["runs"][0]["name"] == "alpha=8,dropout=0.0,eval.every_steps=1,checkpoint.every_steps=3"
    # A plain config with command-line axes only; names are file-system safe and stay distinct;
    # a list-valued key is swept with lists of lists.
    plain = write_sweep(tmp_path / "plain.yaml", base_yaml(tmp_path, out))
    j = dry_run(llmtune, plain, "data.path=[d/x.jsonl, d_x.jsonl]", "lora.target_modules=[[q_proj, v_proj], [all-linear]]")
    assert table(j) == [
        ("path=d_x.jsonl,target_modules=q_proj+v_proj", {"data.path": "d/x.jsonl", "lora.target_modules": "[q_proj, v_proj]"}),
        ("path=d_x.jsonl,target_modules=all-linear", {"data.path": "d/x.jsonl", "lora.target_modules": "[all-linear]"}),
        ("path=d_x.jsonl,target_modules=q_proj+v_proj-2", {"data.path": "d_x.jsonl", "lora.target_modules": "[q_proj, v_proj]"}),
        ("path=d_x.jsonl,target_modules=all-linear-2", {"data.path": "d_x.jsonl", "lora.target_modules": "[all-linear]"})]


@pytest.mark.parametrize("sweep_block, message", [
    ("sweep:\n  grid:\n    train.lr: 1e-3\n", "sweep.grid.train.lr: expects a list of values"),
    ("sweep:\n  paired:\n    - {lora.r: [4, 8], lora.alpha: [8, 16, 32]}\n", "lists of unequal length"),
    ("sweep:\n  grid:\n    train.lrr: [1e-3, 3e-3]\n", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("sweep:\n  grid:\n    train.lr: [1e-3, 3e-3]\n  sample: 3\n", "sweep.sample: 3 but the sweep has only 2 combinations"),
    ("sweep:\n  grid:\n    train.lr: [1e-3, -1]\n", "key 'train.lr' must be > 0, got -1"),
    ("sweep:\n  grid:\n    train.lr: [1e-3, 3e-3]\n  samples: 2\n", "sweep: unknown key 'samples'"),
])
def test_bad_sweep_files_give_one_line_each(llmtune, tmp_path, sweep_block, message):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", base_yaml(tmp_path, out, extra=sweep_block))
    r = llmtune("sweep", sweep)
    assert r.code == 2, r.err
    assert len(errors(r)) == 1 and message in errors(r)[0] and str(sweep) in errors(r)[0], r.err
    assert not out.exists()


def md_rows(text):
    lines = [l for l in text.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def eval_records(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if "eval_loss" in l]


def test_two_by_two_sweep_and_its_summary(llmtune, tmp_path):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", base_yaml(tmp_path, out, extra="""sweep:
  grid:
    train.lr: [1e-3, 3e-3]
    lora.r: [2, 4]
"""))
    r = llmtune("sweep", sweep, timeout=300)
    assert r.code == 0, r.err
    names = ["lr=1e-3,r=2", "lr=1e-3,r=4", "lr=3e-3,r=2", "lr=3e-3,r=4"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "logs") == names
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in names}
    best_eval = {n: min(e["eval_loss"] for e in eval_records(out / n)) for n in names}
    best = min(names, key=best_eval.get)

    rows = [json.loads(l) for l in (out / "sweep_summary.jsonl").read_text().splitlines()]
    assert [row["run"] for row in rows] == names
    for row in rows:
        s = summaries[row["run"]]
        assert row["status"] == "finished" and row["best"] == (row["run"] == best)
        assert row["train.lr"] == row["run"][3:7] and row["lora.r"] == row["run"][-1]
        assert row["final_loss"] == s["final_loss"] and row["tokens_per_second"] == s["tokens_per_second"]
        assert row["peak_memory_bytes"] == s["peak_memory_bytes"] and row["wall_seconds"] == s["wall_seconds"]
        rec = min(eval_records(out / row["run"]), key=lambda e: e["eval_loss"])
        assert row["best_eval_loss"] == rec["eval_loss"] and row["best_eval_perplexity"] == rec["eval_perplexity"]

    with open(out / "sweep_summary.csv", newline="") as f:
        for c, row in zip(csv.DictReader(f), rows, strict=True):
            assert c["run"] == row["run"] and c["best"] == str(row["best"]).lower()
            for k in ("final_loss", "best_eval_loss", "best_eval_perplexity", "tokens_per_second", "wall_seconds"):
                assert float(c[k]) == row[k], k

    md = (out / "sweep_summary.md").read_text()
    assert r.out == md  # printed as written
    for m, row in zip(md_rows(md), rows, strict=True):
        assert m["run"] == row["run"] + (" ★" if row["best"] else "")
        assert m["final loss"] == f"{row['final_loss']:.4f}" and m["best eval loss"] == f"{row['best_eval_loss']:.4f}"
        assert m["best eval ppl"] == f"{row['best_eval_perplexity']:.3f}" and m["status"] == "finished"
        assert m["peak memory"] == f"{row['peak_memory_bytes'] / 2**20:.1f} MiB"

    svg = ET.parse(out / "eval_loss.svg").getroot()
    lines = svg.iter(f"{SVG}polyline")
    got = {}
    for line in lines:
        title = line.find(f"{SVG}title")
        got[title.text if title is not None else ""] = len(line.get("points").split())
    assert got == {n: len(eval_records(out / n)) for n in names}

    # Re-running changes nothing; other fixed settings in the same directory are refused.
    before = {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in names}
    r = llmtune("sweep", sweep, "--json", timeout=120)
    assert r.code == 0, r.err
    assert json.loads(r.out)["best"] == best
    assert {n: (out / n / "metrics.jsonl").stat().st_mtime_ns for n in names} == before
    r = llmtune("sweep", sweep, "train.max_steps=5")
    assert r.code == 2 and "train.max_steps: 4 → 5" in errors(r)[0], r.err

    # --summary works on the sweep, and on separate runs: the varied keys are those that differ.
    r = llmtune("sweep", "--summary", out, "--json")
    assert r.code == 0 and [row["run"] for row in json.loads(r.out)["runs"]] == names, r.err
    runs = tmp_path / "runs"
    runs.mkdir()
    for n in ("lr=1e-3,r=2", "lr=3e-3,r=2"):
        # (a config path holding '=' reads as key=value to finetune: copied to a plain name)
        config = tmp_path / f"{n[3:7]}.yaml"
        config.write_text((out / n / "config.yaml").read_text())
        assert llmtune("finetune", config, f"output={runs / n[:7]}", timeout=120).code == 0
    r = llmtune("sweep", "--summary", runs, "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["keys"] == ["train.lr"]
    for row in got["runs"]:
        s = json.loads((runs / row["run"] / "summary.json").read_text())
        assert row["final_loss"] == s["final_loss"] and row["status"] == "finished"
        assert float(row["train.lr"]) == float(row["run"][3:])


def test_a_failing_run_is_recorded_and_the_others_finish(llmtune, tmp_path):
    out = tmp_path / "sweep"
    missing = tmp_path / "missing.jsonl"  # passes the config check, fails when the run reads it
    sweep = write_sweep(tmp_path / "s.yaml", base_yaml(tmp_path, out, steps=2))
    good = tmp_path / "d.jsonl"
    r = llmtune("sweep", sweep, f"data.path=[{missing}, {good}]", "train.lr=[1e-3, 2e-3]", "--parallel", 2, "--json",
                timeout=300)
    assert r.code == 1, r.err
    rows = {row["run"]: row for row in json.loads(r.out)["runs"]}
    assert len(rows) == 4
    for name, row in rows.items():
        if "missing" in name:
            assert row["status"] == "failed" and str(missing) in row["error"], row
        else:
            assert row["status"] == "finished" and (out / name / "adapter").is_dir()
    assert "2 of 4 run(s) failed" in errors(r)[0]


def wait_for(predicate, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return True
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError("timed out")


def steps_logged(run):
    m = run / "metrics.jsonl"
    if not m.exists():
        return 0
    return max([json.loads(l).get("step", 0) for l in m.read_text().splitlines() if l.strip()] or [0])


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_interrupted_sweep_resumes_without_repeating_finished_runs(tmp_path):
    out = tmp_path / "sweep"
    sweep = write_sweep(tmp_path / "s.yaml", base_yaml(tmp_path, out, steps=20, eval_every=0, extra="""checkpoint:
  every_steps: 3
sweep:
  grid:
    train.lr: [1e-3, 2e-3, 3e-3]
"""))
    names = ["lr=1e-3", "lr=2e-3", "lr=3e-3"]

    def start():
        return subprocess.Popen([str(BIN), "sweep", str(sweep)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)

    # 1. SIGINT while the second run trains: forwarded, the run checkpoints, the sweep stops (exit 0).
    proc = start()
    wait_for(lambda: steps_logged(out / names[1]) >= 3, proc, timeout=240)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "SIGINT" in stderr
    state = {r["name"]: r["status"] for r in json.loads((out / "sweep.json").read_text())["runs"]}
    assert state == {names[0]: "finished", names[1]: "interrupted", names[2]: "pending"}
    first = (out / names[0] / "metrics.jsonl").stat().st_mtime_ns
    stopped_at = steps_logged(out / names[1])
    assert 3 <= stopped_at < 20

    # 2. Again, and kill -9 the sweep and its run while the second run trains on.
    proc = start()
    wait_for(lambda: steps_logged(out / names[1]) >= stopped_at + 2 and children(proc.pid), proc, timeout=240)
    runs = children(proc.pid)
    proc.kill()
    for pid in runs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # already gone (the SIGTERM its dying parent sent)
            pass
    proc.communicate()

    # 3. Once more to the end: the first run is not repeated, the second resumed from its checkpoint.
    r = subprocess.run([str(BIN), "sweep", str(sweep), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [row["status"] for row in json.loads(r.stdout)["runs"]] == ["finished"] * 3
    assert (out / names[0] / "metrics.jsonl").stat().st_mtime_ns == first
    log = (out / "logs" / f"{names[1]}.log").read_text()
    headers = [l for l in log.splitlines() if l.startswith("### llmtune")]
    assert len(headers) == 3 and [h.endswith("--resume --json") for h in headers] == [False, True, True], headers
    for n in names:
        losses = [json.loads(l)["step"] for l in (out / n / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
        assert losses == list(range(1, 21)), n
