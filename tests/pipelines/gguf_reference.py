"""References for tests/pipelines/test_gguf_export.cpp, run as `python gguf_reference.py req resp`.

phase "prepare": builds the inputs the C++ side exports (a hidden-256 Llama for K-quants, PEFT
LoRA / rsLoRA / DoRA adapters and the merged model, a GGUF written by gguf-py's GGUFWriter the way
convert_hf_to_gguf.py writes one) and the transformers logits of every fixture on a probe.
phase "verify": reads the C++ files back with gguf.GGUFReader, transformers and peft, and returns
the list of mismatches (empty when everything agrees).
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q

import gguf_families_reference as families

PROBE = "Hello world, this is a probe of the exported model."


def hf_model(d):
    from transformers import AutoModelForCausalLM
    # Gemma 2/3's soft-capped attention scores exist only in the eager path
    eager = json.loads((Path(d) / "config.json").read_text())["model_type"] in ("gemma2", "gemma3_text")
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **({"attn_implementation": "eager"} if eager else {})).eval()


def probe_ids(d):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(d).encode(PROBE)


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def unpermute(w, n_head):  # GGUF row 2j+k → HF row k*hd/2 + j, written independently of the C++
    rows = w.shape[0]
    hd = rows // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for j in range(hd // 2):
            for k in range(2):
                out[h * hd + k * (hd // 2) + j] = w[h * hd + 2 * j + k]
    return out


def permute(w, n_head):
    rows = w.shape[0]
    hd = rows // n_head
    out = np.empty_like(w)
    for h in range(n_head):
        for j in range(hd // 2):
            for k in range(2):
                out[h * hd + 2 * j + k] = w[h * hd + k * (hd // 2) + j]
    return out


HF_OF = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
         "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_name(gname):
    stem, suffix = gname.rsplit(".", 1)
    if stem == "token_embd": return "model.embed_tokens." + suffix
    if stem == "output_norm": return "model.norm." + suffix
    if stem == "output": return "lm_head." + suffix
    _, n, t = stem.split(".", 2)
    return f"model.layers.{n}.{HF_OF[t]}.{suffix}"


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


# ---------------------------------------------------------------------------------------------
def prepare(req):
    work = Path(req["work"])
    fixtures = Path(req["fixtures"])
    out = {"logits": {}, "ids": {}}
    for name in req["models"]:
        d = fixtures / name
        ids = probe_ids(d)
        out["ids"][name] = ids
        out["logits"][name] = logits_of(hf_model(d), ids).tolist()

    # A Llama whose rows are multiples of 256, for the K-quant mixes (tokenizer from tinyllama).
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    kq = work / "kquant"
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1536, max_position_embeddings=256, head_dim=64)
    LlamaForCausalLM(cfg).save_pretrained(kq)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(fixtures / "tinyllama" / f, kq / f)

    # PEFT adapters on llama3 with nonzero B; the merged model beside them.
    from peft import LoraConfig, get_peft_model
    base_dir = fixtures / "llama3"
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for kind, extra in (("lora", {}), ("rslora", {"use_rslora": True}), ("dora", {"use_dora": True})):
        torch.manual_seed(1)
        model = get_peft_model(hf_model(base_dir), LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                              init_lora_weights=False, **extra))
        model.save_pretrained(work / kind)
        if kind == "lora":
            merged = model.merge_and_unload()
            merged.save_pretrained(work / "merged")
            for f in base_dir.iterdir():
                if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
                    shutil.copy(f, work / "merged" / f.name)

    # A GGUF as llama.cpp's converter writes one (F16 matrices, F32 norms), made with gguf-py.
    write_gguf_py(fixtures / "tinyllama", work / "gguf_py.gguf")
    return out


def write_gguf_py(d, path):
    import sentencepiece as spm
    from safetensors.numpy import load_file
    c = json.loads((d / "config.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tinyllama-gguf-py")
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(c["vocab_size"])
    w.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 1)
    for i in range(sp.vocab_size(), c["vocab_size"]):
        tokens.append(f"[PAD{i}]".encode()); scores.append(-1000.0); types.append(5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    gguf.SpecialVocab(d, load_merges=False).add_to_gguf(w)
    st = load_file(str(d / "model.safetensors"))
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    for name, t in st.items():
        gname = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c["num_hidden_layers"]).get_name(
            name, try_suffixes=(".weight", ".bias"))
        t = t.astype(np.float32)
        if name.endswith("q_proj.weight"): t = permute(t, nh)
        if name.endswith("k_proj.weight"): t = permute(t, nkv)
        w.add_tensor(gname, t if t.ndim == 1 or gname.endswith("_norm.weight") else t.astype(np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


# ---------------------------------------------------------------------------------------------
def check_file(case, errors):
    """Metadata equals config.json's, tensor types are the expected ones, values equal the source."""
    from safetensors.torch import load_file
    path, d, ftype = case["gguf"], Path(case["model_dir"]), case["type"]
    tag = f"{Path(path).name}"
    c = json.loads((d / "config.json").read_text())
    if c["model_type"] in families.ARCH:  # qwen3, gemma2, gemma3, phi3, gpt2: their own checks
        return families.check_file(case, errors)
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    want_arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma": "gemma"}[c["model_type"]]
    if arch != want_arch: errors.append(f"{tag}: architecture {arch}")
    hd = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    rp = c.get("rope_parameters") or {}
    want = {"block_count": c["num_hidden_layers"], "context_length": c["max_position_embeddings"],
            "embedding_length": c["hidden_size"], "feed_forward_length": c["intermediate_size"],
            "attention.head_count": c["num_attention_heads"],
            "attention.head_count_kv": c.get("num_key_value_heads") or c["num_attention_heads"]}
    if arch != "gemma": want["rope.freq_base"] = rp.get("rope_theta", c.get("rope_theta"))
    if arch == "llama": want.update({"vocab_size": c["vocab_size"], "rope.dimension_count": hd})
    for k, v in want.items():
        got = field(r, f"{arch}.{k}")
        if got is None or abs(float(got) - float(v)) > 1e-6 * max(1.0, abs(float(v))):
            errors.append(f"{tag}: {arch}.{k} = {got}, config.json says {v}")
    eps = field(r, f"{arch}.attention.layer_norm_rms_epsilon")
    if eps is None or np.float32(eps) != np.float32(c["rms_norm_eps"]): errors.append(f"{tag}: rms eps {eps}")
    if rp.get("rope_type") == "linear":
        if field(r, f"{arch}.rope.scaling.type") != "linear" or field(r, f"{arch}.rope.scaling.factor") != rp["factor"]:
            errors.append(f"{tag}: linear rope scaling keys")
    want_ftype = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q4_k_s": 14, "q6_k": 18}[ftype]
    if field(r, "general.file_type") != want_ftype: errors.append(f"{tag}: file_type {field(r, 'general.file_type')}")
    if field(r, "general.quantization_version") != 2: errors.append(f"{tag}: quantization_version")
    if len(field(r, "tokenizer.ggml.tokens")) != c["vocab_size"]: errors.append(f"{tag}: token count")

    src = load_file(str(d / "model.safetensors"))
    tied = c.get("tie_word_embeddings", False) or c["model_type"] == "gemma"
    names = {t.name for t in r.tensors}
    want_names = {gguf_name for gguf_name in (
        ["token_embd.weight", "output_norm.weight"] + ([] if tied else ["output.weight"]) +
        [f"blk.{i}.{t}.{s}" for i in range(c["num_hidden_layers"]) for t in HF_OF for s in ("weight", "bias")
         if f"model.layers.{i}.{HF_OF[t]}.{s}" in src])}
    if rp.get("rope_type") == "llama3": want_names.add("rope_freqs.weight")
    if names != want_names: errors.append(f"{tag}: tensors {sorted(names ^ want_names)} differ")
    expected_types = case.get("expected_types", {})
    nh = c["num_attention_heads"]; nkv = c.get("num_key_value_heads") or nh
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            check_rope_freqs(t, rp, hd, tag, errors)
            continue
        want_t = expected_types.get(t.name) or expected_types.get("*" if len(t.shape) > 1 and not t.name.endswith("_norm.weight") else "1d")
        if want_t and t.tensor_type.name != want_t:
            errors.append(f"{tag}: {t.name} is {t.tensor_type.name}, llama.cpp gives {want_t}")
        s = src[hf_name(t.name)].float().numpy()
        if c["model_type"] == "gemma" and t.name.endswith("norm.weight"): s = s + np.float32(1)
        if arch == "llama" and ".attn_q." in t.name: s = permute(s, nh)
        if arch == "llama" and ".attn_k." in t.name: s = permute(s, nkv)
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(s.shape)
        tt = t.tensor_type
        if tt == Q.F32: ok = np.array_equal(got, s)
        elif tt == Q.F16: ok = np.array_equal(got, s.astype(np.float16).astype(np.float32))
        elif tt == Q.BF16: ok = np.array_equal(np.asarray(t.data).tobytes(), gguf.quants.quantize(s, Q.BF16).tobytes())
        elif tt in (Q.Q8_0, Q.Q4_0):
            ok = np.array_equal(np.asarray(t.data).tobytes(), gguf.quants.quantize(s, tt).tobytes())
        else:  # K-quants: gguf-py only dequantizes; the error must be that of a 4/5/6-bit code
            bits = {Q.Q4_K: 4, Q.Q5_K: 5, Q.Q6_K: 6, Q.Q5_0: 5, Q.Q5_1: 5}[tt]
            ok = np.abs(got - s).max() <= 2.5 * np.abs(s).max() / (2 ** (bits - 1))
        if not ok: errors.append(f"{tag}: {t.name} ({tt.name}) values differ from the source")


def check_rope_freqs(t, rp, hd, tag, errors):
    base = rp["rope_theta"]
    freqs = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    old = rp["original_max_position_embeddings"]
    lo, hi, factor = old / rp["low_freq_factor"], old / rp["high_freq_factor"], rp["factor"]
    want = []
    for f in freqs:
        wl = 2 * np.pi / f
        if wl < hi: want.append(1)
        elif wl > lo: want.append(factor)
        else:
            s = (old / wl - rp["low_freq_factor"]) / (rp["high_freq_factor"] - rp["low_freq_factor"])
            want.append(1 / ((1 - s) / factor + s))
    want = torch.tensor(want, dtype=torch.float32).numpy()
    if t.tensor_type != Q.F32 or not np.allclose(np.asarray(t.data), want, rtol=1e-6, atol=0):
        errors.append(f"{tag}: rope_freqs {np.asarray(t.data)} vs {want}")


def check_transformers(case, errors):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path, d = Path(case["gguf"]), Path(case["model_dir"])
    m = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = probe_ids(d)
    diff = (logits_of(m, ids) - logits_of(hf_model(d), ids)).abs().max().item()
    if diff > case["tol"]: errors.append(f"{path.name}: transformers logits differ by {diff}")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tok.encode(PROBE) != ids: errors.append(f"{path.name}: transformers' GGUF tokenizer encodes {tok.encode(PROBE)} vs {ids}")


def check_lora(case, errors):
    from safetensors.torch import load_file
    adapter, base_dir = Path(case["adapter"]), Path(case["model_dir"])
    c = json.loads((base_dir / "config.json").read_text())
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    r_ = gguf.GGUFReader(case["gguf"])
    if field(r_, "general.type") != "adapter" or field(r_, "adapter.type") != "lora":
        errors.append("lora: general.type/adapter.type")
    r = acfg["r"]
    scale = acfg["lora_alpha"] / (np.sqrt(r) if acfg.get("use_rslora") else r)
    alpha = field(r_, "adapter.lora.alpha")
    if not np.isclose(alpha / r, scale, rtol=1e-6): errors.append(f"lora: alpha {alpha} gives {alpha / r}, PEFT scales by {scale}")
    peft_t = load_file(str(adapter / "adapter_model.safetensors"))
    tensors = {t.name: t for t in r_.tensors}
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    for key, v in peft_t.items():
        module = key[len("base_model.model."):].rsplit(".lora_", 1)[0]
        layer = module.split(".")[2]
        short = [k for k, vv in HF_OF.items() if module.endswith(vv)][0]
        name = f"blk.{layer}.{short}.weight.lora_" + ("a" if ".lora_A." in key else "b")
        want = v.float().numpy()
        if name.endswith("lora_b") and short == "attn_q": want = permute(want, nh)
        if name.endswith("lora_b") and short == "attn_k": want = permute(want, nkv)
        if name not in tensors or not np.array_equal(gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type), want):
            errors.append(f"lora: {name} differs from {key}")
    # W_gguf + (alpha/r)·B·A in GGUF space equals the merged model's F32 GGUF.
    if "merged_gguf" not in case:
        return
    base = {t.name: t for t in gguf.GGUFReader(case["base_gguf"]).tensors}
    merged = {t.name: t for t in gguf.GGUFReader(case["merged_gguf"]).tensors}
    for name in tensors:
        if not name.endswith(".lora_a"): continue
        w = name[:-len(".lora_a")]
        a = gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type)
        b = gguf.quants.dequantize(tensors[w + ".lora_b"].data, tensors[w + ".lora_b"].tensor_type)
        got = np.asarray(base[w].data) + (alpha / a.shape[0]) * (b @ a)
        diff = np.abs(got - np.asarray(merged[w].data)).max()
        if diff > 1e-5: errors.append(f"lora: {w}: base + alpha/r·B·A differs from the merged GGUF by {diff}")


def verify(req):
    errors = []
    for case in req["files"]: check_file(case, errors)
    for case in req["transformers"]: check_transformers(case, errors)
    for case in req["lora"]: check_lora(case, errors)
    return {"errors": errors}


if __name__ == "__main__":
    request = json.loads(Path(sys.argv[1]).read_text())
    response = prepare(request) if request["phase"] == "prepare" else verify(request)
    Path(sys.argv[2]).write_text(json.dumps(response))
