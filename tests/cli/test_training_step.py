"""The training step end to end: the chunked LM-head loss lowers a step's peak memory by at least
the full logits it no longer holds (a 49,152-token vocabulary), with the same losses as the
unchunked reference path; and fp16 training runs with dynamic loss scaling."""
import json
import os
import random
import shutil
from pathlib import Path

FIXTURES = Path(os.environ.get("LLMTUNE_FIXTURES_DIR", Path(__file__).resolve().parents[2] / "build" / "fixtures"))
MODELS = FIXTURES / "models"


def text_rows(path, n, words, seed=0):
    rng = random.Random(seed)
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))}) + "\n" for _ in range(n)))
    return path


def big_vocab_model(tmp_path, vocab=49152):
    """config.json of a small Llama with a 49,152-token vocabulary (SmolLM's) and a fixture tokenizer."""
    d = tmp_path / "model"
    d.mkdir()
    config = {"model_type": "llama", "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 512, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    (d / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (MODELS / "qwen2" / f).exists():
            shutil.copy(MODELS / "qwen2" / f, d / f)
    return d


def test_chunked_loss_lowers_peak_memory_by_the_logits(llmtune, tmp_path):
    model = big_vocab_model(tmp_path)
    data = text_rows(tmp_path / "d.jsonl", 120, 60)
    batch, seq, vocab = 4, 256, 49152
    runs = {}
    for name, chunk in (("reference", -1), ("chunked", 0)):
        out = tmp_path / name
        r = llmtune("finetune", "--model", model, "--data", data, "--output", out, "--max-steps", 2, "method=full",
                    "model.init=random", "data.format=text", f"data.max_seq_len={seq}", f"train.batch_size={batch}",
                    f"train.loss_chunk_rows={chunk}", "device=cpu", "--json", timeout=600)
        assert r.code == 0, r.err
        runs[name] = json.loads(r.out)
        runs[name]["losses"] = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines()
                                if "loss" in json.loads(l)]
    # The same losses (fp32 rounding), and the peak drops by at least one fp32 copy of the logits.
    for a, b in zip(runs["chunked"]["losses"], runs["reference"]["losses"]):
        assert abs(a - b) <= 1e-5 * abs(b), (runs["chunked"]["losses"], runs["reference"]["losses"])
    logits_bytes = batch * seq * vocab * 4
    drop = runs["reference"]["peak_memory_bytes"] - runs["chunked"]["peak_memory_bytes"]
    print(f"peak memory: reference {runs['reference']['peak_memory_bytes'] / 2**20:.0f} MiB, chunked "
          f"{runs['chunked']['peak_memory_bytes'] / 2**20:.0f} MiB, drop {drop / 2**20:.0f} MiB; "
          f"one fp32 logits copy {logits_bytes / 2**20:.0f} MiB")
    assert drop >= logits_bytes, (drop, logits_bytes)


def test_fp16_training_scales_the_loss(llmtune, tmp_path):
    data = text_rows(tmp_path / "d.jsonl", 40, 20, seed=1)
    out = tmp_path / "run"
    r = llmtune("finetune", "--model", MODELS / "llama3", "--data", data, "--output", out, "--max-steps", 6,
                "data.format=text", "data.max_seq_len=64", "train.batch_size=4", "train.lr=1e-3", "device=cpu",
                "dtype=fp16", "--json", timeout=600)
    assert r.code == 0, r.err
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in records if "loss" in x]
    assert len(steps) == 6
    assert all(x["loss_scale"] > 1 for x in steps), steps
    assert not any(x["skipped"] for x in steps), steps
    assert all(x["loss"] == x["loss"] and x["loss"] < 100 for x in steps)  # finite
    assert steps[-1]["loss"] < steps[0]["loss"]
