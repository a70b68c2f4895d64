"""QLoRA through the real binary: the base quantized to NF4/FP4 while it loads, LoRA/DoRA trained
over it with the usual run directory; settings that cannot work are usage errors. (Parity of the
4-bit linear with bitsandbytes and transformers is in tests/quant/test_bnb_linear.cpp.)"""
import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODEL = FIXTURES / "models" / "qwen2"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Say {w}.", "output": f"{w} {w}."} for w in ("one", "two", "three", "four")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 4))
    return path


@pytest.mark.parametrize("extra", [["model.quantize=nf4"], ["model.quantize=fp4", "model.double_quant=false",
                                                             "lora.use_dora=true", "train.grad_checkpointing=true"]])
def test_qlora_trains_and_resumes(llmtune, data, tmp_path, extra):
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 3, "--device", "cpu",
                "checkpoint.every_steps=2", *extra, "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["steps"] == 3 and summary["final_loss"] == pytest.approx(summary["final_loss"])  # finite
    assert any("base quantized to" in l for l in r.err_lines)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(l == l for l in losses)
    r = llmtune("finetune", out / "config.yaml", "--resume", "train.max_steps=4")
    assert r.code == 0, r.err


@pytest.mark.parametrize("extra,needle", [
    (["model.quantize=nf4", "method=full"], "needs an adapter method"),
    (["model.quantize=nf4", "model.quant_blocksize=48"], "not a power of two"),
    (["model.quantize=int3"], "model.quantize"),
])
def test_qlora_settings_that_cannot_work_are_refused(llmtune, data, tmp_path, extra, needle):
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODEL, "--data", data, "--output", out, "--max-steps", 1, *extra)
    assert r.code == 2, r.err
    errors = [l for l in r.err_lines if l.startswith("llmtune: error:")]
    assert len(errors) == 1 and needle in errors[0], r.err
    assert not out.exists()
