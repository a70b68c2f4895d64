"""GGUF through the real binary: `merge --gguf`, `quantize`, `--ollama`, `--lora-gguf`, and
`infer`/`eval` on the written files, checked against the merged Hugging Face directory and the
`gguf` package."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from test_merge import MODELS, errors, make_adapter

ROOT = Path(os.environ.get("LLMTUNE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
DEMO = ROOT / "demo"


def greedy(llmtune, model, prompt, n=12):
    r = llmtune("infer", "--model", model, "--prompt", prompt, "--raw", "--max-new-tokens", n, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)["token_ids"]


@pytest.mark.parametrize("family", ["tinyllama", "qwen2"])
def test_infer_on_an_f16_gguf_equals_the_merged_directory(llmtune, tmp_path, family):
    base = MODELS / family
    adapter = make_adapter(base, tmp_path / "adapter", seed=21)
    merged = tmp_path / "merged"
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--output", merged, "--gguf", tmp_path / "f16.gguf",
                "--gguf-type", "f16", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["gguf"]["file_type"].upper() == "F16"
    for prompt in ("the quick brown fox", "Hello world, 123"):
        assert greedy(llmtune, tmp_path / "f16.gguf", prompt) == greedy(llmtune, merged, prompt)


def test_gguf_package_reads_the_merged_export(llmtune, tmp_path):
    import gguf

    base = MODELS / "llama3"
    adapter = make_adapter(base, tmp_path / "adapter", seed=4)
    r = llmtune("merge", "--model", base, "--adapter", adapter, "--gguf", tmp_path / "m.gguf", "--gguf-type", "f32",
                "--dtype", "fp32")
    assert r.code == 0, r.err
    assert not (tmp_path / "adapter-merged").exists()  # GGUF only: no HF directory unless --output
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    config = json.loads((base / "config.json").read_text())
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.embedding_length"] == config["hidden_size"]
    assert fields["tokenizer.ggml.model"] == "gpt2"
    # The merged embedding (untouched by the adapter) equals the source exactly.
    from safetensors.numpy import load_file
    src = load_file(base / "model.safetensors")
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert np.array_equal(np.asarray(emb.data), src["model.embed_tokens.weight"])


def test_q4_exports_stay_within_the_perplexity_budget(llmtune, tmp_path):
    """The bundled demo model (a trained 0.9M Llama) on its held-out prose: F16 costs < 0.1%
    perplexity, Q8_0 < 0.5%, Q4_0 and the Q4_K_M mix (Q5_0/Q8_0 fallbacks at hidden 128) < 3%."""
    data = DEMO / "data" / "pretrain_val.jsonl"
    results = {}
    for t in ("f16", "q8_0", "q4_0", "q4_k_m"):
        r = llmtune("quantize", "--model", DEMO / "model", "--output", tmp_path / f"{t}.gguf", "--type", t,
                    "--eval-data", data, "--json", timeout=300)
        assert r.code == 0, r.err
        results[t] = json.loads(r.out)
    source = results["f16"]["source_perplexity"]
    cost = {t: results[t]["gguf_perplexity"] / source - 1 for t in results}
    assert abs(cost["f16"]) < 0.001, cost
    assert abs(cost["q8_0"]) < 0.005, cost
    assert abs(cost["q4_0"]) < 0.03 and abs(cost["q4_k_m"]) < 0.03, cost
    assert results["q4_0"]["bytes"] < results["q8_0"]["bytes"] < results["f16"]["bytes"]


def test_finetune_run_to_q8_0_gguf_ollama_and_lora_gguf(llmtune, tmp_path):
    """A demo LoRA run merged straight to a Q8_0 GGUF with a Modelfile and the adapter as a GGUF
    LoRA. The Q8_0 file answers with the merged directory's greedy tokens (the demo model is
    trained, so its choices are not coin flips that 8-bit rounding could turn)."""
    import gguf

    run = tmp_path / "run"
    r = llmtune("finetune", ROOT / "configs" / "demo-lora.yaml", f"output={run}", "train.max_steps=2",
                "eval.max_batches=1", cwd=ROOT, timeout=300)
    assert r.code == 0, r.err
    out = tmp_path / "export"
    r = llmtune("merge", "--adapter", run, "--output", run / "merged", "--gguf", out / "demo.gguf", "--gguf-type", "q8_0",
                "--ollama", "--lora-gguf", out / "demo-lora.gguf", cwd=ROOT)
    assert r.code == 0, r.err
    # Greedy decoding of the Q8_0 file equals transformers' on the same file (it dequantizes the
    # GGUF itself with gguf-py); the prompts go through the chat template the run trained with.
    import torch
    import transformers as tf

    hf = tf.AutoModelForCausalLM.from_pretrained(out, gguf_file="demo.gguf", dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(run / "merged")
    for prompt in ("What is the opposite of the word cold?", "Name three colors."):
        r = llmtune("infer", "--model", out / "demo.gguf", "--prompt", prompt, "--max-new-tokens", 24, "--json")
        assert r.code == 0, r.err
        ours = json.loads(r.out)["token_ids"]
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:]
        assert ours == ref.tolist()[:len(ours)] and len(ours) > 0
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./demo.gguf")
    assert "PARAMETER stop" in modelfile and "TEMPLATE" in modelfile
    lora = gguf.GGUFReader(out / "demo-lora.gguf")
    fields = {k: f.contents() for k, f in lora.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert any(t.name.endswith(".lora_a") for t in lora.tensors)
    # An existing GGUF is not replaced without --force.
    r = llmtune("merge", "--adapter", run, "--gguf", out / "demo.gguf", cwd=ROOT)
    assert r.code == 2 and "--force" in errors(r)[0]


def test_malformed_gguf_is_one_line_naming_the_file(llmtune, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    r = llmtune("infer", "--model", bad, "--prompt", "hi", "--raw")
    assert r.code == 1
    assert len(errors(r)) == 1 and str(bad) in errors(r)[0]


def kquant_model(tmp_path):
    """A tiny Llama whose rows are multiples of 256 (K-quant blocks), with the tinyllama fixture's
    SentencePiece tokenizer."""
    import shutil
    import torch
    import transformers as tf

    src = MODELS / "tinyllama"
    out = tmp_path / "k256"
    config = tf.LlamaConfig(vocab_size=json.loads((src / "config.json").read_text())["vocab_size"], hidden_size=256,
                            intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.15)
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("family,qtype", [("tinyllama", "q8_0"), ("qwen2", "q4_0"), ("tinyllama", "q4_1"),
                                          ("k256", "q4_k_m"), ("k256", "q6_k")])
def test_eval_on_a_quantized_gguf_equals_transformers_on_the_same_file(llmtune, tmp_path, family, qtype):
    """transformers dequantizes the GGUF itself (gguf-py): its loss on our file = `llmtune eval` on it."""
    import torch
    import transformers as tf

    base = kquant_model(tmp_path) if family == "k256" else MODELS / family
    out = tmp_path / "gguf"
    r = llmtune("quantize", "--model", base, "--output", out / "m.gguf", "--type", qtype, "--json")
    assert r.code == 0, r.err
    if family == "k256":  # the K-quant types themselves, not their fallbacks
        assert {"Q4_K", "Q6_K"} & set(json.loads(r.out)["tensors_per_type"]), r.out
    text = "The quick brown fox jumps over the lazy dog, 42 times. " * 3
    data = tmp_path / "eval.txt"
    data.write_text(text)
    r = llmtune("eval", "--model", out / "m.gguf", "--data", data, "--max-seq-len", "256", "--json")
    assert r.code == 0, r.err
    ours = json.loads(r.out)
    ids = tf.AutoTokenizer.from_pretrained(base)(text, return_tensors="pt").input_ids
    assert ours["tokens"] == ids.shape[1] - 1
    model = tf.AutoModelForCausalLM.from_pretrained(out, gguf_file="m.gguf", dtype=torch.float32)
    with torch.no_grad():
        ref = model(ids, labels=ids).loss.item()
    assert abs(ours["loss"] - ref) <= 1e-4 * abs(ref), (ours["loss"], ref)
