"""References for tests/pipelines/test_gguf_families.cpp (and, for these families, the files
check of test_gguf_export.cpp): GGUF export/import of qwen3, gemma2, gemma3, phi3 and gpt2.

What llama.cpp's convert_hf_to_gguf.py writes for each architecture is spelled out here from its
source (TextModel.set_gguf_parameters, Gemma2Model, Gemma3Model, Phi3MiniModel, GPT2Model), on the
hyperparameters it reads (transformers' AutoConfig(...).to_dict()), with its tensor names from
gguf-py's tensor map. Where llmtune departs from the converter, the entry says so.

phase "verify": checks the C++ exports (keys in order with their types and values, tensor names,
shapes, types and values), writes a GGUF per model the way the converter does (gguf-py's
GGUFWriter, no llmtune keys) for the C++ side to load, and returns the transformers logits it must
give: the HF model's, or for Gemma 2/3, the HF model run with what llama.cpp assumes for them.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

PROBE = ("Hello world, this is a probe of the exported model: it runs past the sliding windows, "
         "then a little further.")
ARCH = {"qwen3": "qwen3", "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "gpt2": "gpt2"}
MODEL_ARCH = {"qwen3": gguf.MODEL_ARCH.QWEN3, "gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3,
              "phi3": gguf.MODEL_ARCH.PHI3, "gpt2": gguf.MODEL_ARCH.GPT2}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}
# Keys llmtune adds after the converter's where a fixture departs from what llama.cpp assumes
# (llama.cpp ignores them; llmtune's import reads them back).
LLMTUNE_KEYS = {
    "gemma2": [("attention.scale", V.FLOAT32, 24 ** -0.5)],  # query_pre_attn_scalar 24, llama.cpp uses head_dim 16
    "gemma3": [("attention.sliding_window_pattern", V.BOOL, [True, True, False, True])],  # not every layer but each 6th
}


def hparams(d):
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(d).to_dict()


def rope_params(h):
    return h.get("rope_parameters") or h.get("rope_scaling") or {}


def converter_keys(h, file_type):
    """(key without "<arch>.", value type, value) in the order set_gguf_parameters writes them;
    "general.file_type" keeps its full name. Phi-3's longrope attn_factor is listed first: the
    converter sets it while generating tensors, before the general.* keys."""
    U, F, S = V.UINT32, V.FLOAT32, V.STRING
    arch = ARCH[h["model_type"]]
    rp = rope_params(h)
    ft = ("general.file_type", U, file_type)
    if arch == "gpt2":
        return [("block_count", U, h["n_layer"]),
                # the converter reads n_ctx, which GPT2Config no longer has: n_positions is the same number
                ("context_length", U, h.get("n_ctx", h["n_positions"])),
                ("embedding_length", U, h["n_embd"]),
                # the converter writes 4·n_embd whatever n_inner says (a file llama.cpp cannot load when
                # they differ); llmtune writes the tensors' width
                ("feed_forward_length", U, h.get("n_inner") or 4 * h["n_embd"]),
                ("attention.head_count", U, h["n_head"]),
                ("attention.layer_norm_epsilon", F, h["layer_norm_epsilon"]), ft]
    if arch == "phi3":
        n_embd, n_head = h["hidden_size"], h["num_attention_heads"]
        # the converter reads it from rope_parameters, which transformers 5 fills only for longrope
        orig = rp.get("original_max_position_embeddings", h.get("original_max_position_embeddings", 4096))
        out = []
        if rp.get("long_factor"):
            scale = h["max_position_embeddings"] / orig
            out.append(("rope.scaling.attn_factor", F, math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0))
        return out + [("context_length", U, h["max_position_embeddings"]),
                      ("rope.scaling.original_context_length", U, orig),
                      ("embedding_length", U, n_embd), ("feed_forward_length", U, h["intermediate_size"]),
                      ("block_count", U, h["num_hidden_layers"]), ("attention.head_count", U, n_head),
                      ("attention.head_count_kv", U, h["num_key_value_heads"]),
                      ("attention.layer_norm_rms_epsilon", F, h["rms_norm_eps"]),
                      ("rope.dimension_count", U, int(rp.get("partial_rotary_factor", 1.0) * n_embd) // n_head),
                      ("rope.freq_base", F, rp["rope_theta"]), ft,
                      ("attention.sliding_window", U, h.get("sliding_window") or 0)]
    if arch == "gemma2":
        return [("context_length", U, h["max_position_embeddings"]), ("embedding_length", U, h["hidden_size"]),
                ("block_count", U, h["num_hidden_layers"]), ("feed_forward_length", U, h["intermediate_size"]),
                ("attention.head_count", U, h["num_attention_heads"]),
                ("attention.head_count_kv", U, h["num_key_value_heads"]),
                ("attention.layer_norm_rms_epsilon", F, h["rms_norm_eps"]),
                ("attention.key_length", U, h["head_dim"]), ("attention.value_length", U, h["head_dim"]), ft,
                ("attn_logit_softcapping", F, h["attn_logit_softcapping"]),
                ("final_logit_softcapping", F, h["final_logit_softcapping"]),
                ("attention.sliding_window", U, h["sliding_window"])]
    # TextModel.set_gguf_parameters (qwen3; gemma3 before its own keys, which rewrite some in place)
    full = rp.get("full_attention", rp)
    out = [("block_count", U, h["num_hidden_layers"]), ("context_length", U, h["max_position_embeddings"]),
           ("embedding_length", U, h["hidden_size"]), ("feed_forward_length", U, h["intermediate_size"]),
           ("attention.head_count", U, h["num_attention_heads"]),
           ("attention.head_count_kv", U, h["num_key_value_heads"])]
    if full.get("rope_type") == "linear":
        out += [("rope.scaling.type", S, "linear"), ("rope.scaling.factor", F, full["factor"])]
    out.append(("rope.freq_base", F, full["rope_theta"]))
    if "rope_theta" in rp.get("sliding_attention", {}):
        out.append(("rope.freq_base_swa", F, rp["sliding_attention"]["rope_theta"]))
    out.append(("attention.layer_norm_rms_epsilon", F, h["rms_norm_eps"]))
    if h.get("head_dim") is not None:
        out += [("attention.key_length", U, h["head_dim"]), ("attention.value_length", U, h["head_dim"])]
    out.append(ft)
    if arch == "gemma3":
        if h.get("final_logit_softcapping"):
            out.append(("final_logit_softcapping", F, h["final_logit_softcapping"]))
        if h.get("sliding_window_pattern") != 1:
            out.append(("attention.sliding_window", U, h["sliding_window"]))
    return out


def source_tensors(d, h):
    """GGUF name → float32 array as the converter writes it, from the checkpoint."""
    from safetensors.torch import load_file
    arch = ARCH[h["model_type"]]
    tmap = gguf.get_tensor_name_map(MODEL_ARCH[arch], h.get("num_hidden_layers") or h["n_layer"])
    out = {}
    for name, t in load_file(str(Path(d) / "model.safetensors")).items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or (arch == "gemma2" and name == "lm_head.weight"):
            continue
        t = t.float()
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            t = t + 1
        if arch == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            t = t.T.contiguous()
        # (Gemma3Model also cuts token_embd to the tokenizer's size; with the fixture's tokenizer.json
        # that leaves fewer rows than the padded token list, a file llama.cpp refuses: llmtune keeps them.)
        out[tmap.get_name(name, try_suffixes=(".weight", ".bias"))] = t.numpy()
    rp = rope_params(h)
    if arch == "phi3" and rp.get("long_factor"):
        out["rope_factors_long.weight"] = np.array(rp["long_factor"], dtype=np.float32)
        out["rope_factors_short.weight"] = np.array(rp["short_factor"], dtype=np.float32)
    return out


def field(r, key):
    f = r.fields.get(key)
    return None if f is None else f.contents()


def close(got, want, vtype):
    if vtype == V.FLOAT32:
        return np.float32(got) == np.float32(want)
    return got == want


def check_file(case, errors):
    """Keys (order, types, values), tensor names, shapes, types and values of one export."""
    path, d, ftype = case["gguf"], Path(case["model_dir"]), case["type"]
    tag = Path(path).name
    h = hparams(d)
    arch = ARCH[h["model_type"]]
    r = gguf.GGUFReader(path)
    keys = [k for k in r.fields if not k.startswith("GGUF.")]  # the reader's header pseudo-fields
    if keys[0] != "general.architecture" or field(r, "general.architecture") != arch:
        errors.append(f"{tag}: general.architecture {field(r, 'general.architecture')} is not first / {arch}")
    want = converter_keys(h, FILE_TYPE[ftype]) + LLMTUNE_KEYS.get(d.name, [])
    full = lambda k: k if k.startswith("general.") else f"{arch}.{k}"  # noqa: E731
    got_order = [k for k in keys if k.startswith(arch + ".") or k == "general.file_type"]
    if got_order != [full(k) for k, _, _ in want]:
        errors.append(f"{tag}: keys {got_order}, the converter writes {[full(k) for k, _, _ in want]}")
    if want[0][0] == "rope.scaling.attn_factor" and keys.index(full(want[0][0])) != 1:
        errors.append(f"{tag}: {full(want[0][0])} is not right after general.architecture")
    for k, vtype, value in want:
        f = r.fields.get(full(k))
        if f is None:
            continue
        types = list(f.types)
        want_types = [V.ARRAY, vtype] if isinstance(value, list) else [vtype]
        if types != want_types:
            errors.append(f"{tag}: {full(k)} has types {types}, the converter writes {want_types}")
        if not close(f.contents(), value, vtype):
            errors.append(f"{tag}: {full(k)} = {f.contents()}, the converter writes {value}")
    if field(r, "general.quantization_version") != 2:
        errors.append(f"{tag}: general.quantization_version")

    src = source_tensors(d, h)
    tensors = {t.name: t for t in r.tensors}
    if set(tensors) != set(src):
        errors.append(f"{tag}: tensors {sorted(set(tensors) ^ set(src))} differ from the converter's")
    expected_types = case.get("expected_types", {})
    for name, s in src.items():
        t = tensors.get(name)
        if t is None:
            continue
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if shape != s.shape:
            errors.append(f"{tag}: {name} has shape {shape}, the converter's is {s.shape}")
            continue
        one_d = s.ndim == 1 or name.endswith("_norm.weight") or name == "position_embd.weight"
        want_t = expected_types.get(name) or expected_types.get("1d" if one_d else "*")
        if want_t and t.tensor_type.name != want_t:
            errors.append(f"{tag}: {name} is {t.tensor_type.name}, llama.cpp gives {want_t}")
        tt = t.tensor_type
        data = np.asarray(t.data)
        if tt == Q.F32:
            ok = np.array_equal(data.reshape(s.shape), s)
        elif tt == Q.F16:
            ok = np.array_equal(data.reshape(s.shape), s.astype(np.float16))
        elif tt == Q.Q8_0:  # gguf-py's encoder is the reference
            ok = np.array_equal(data.tobytes(), gguf.quants.quantize(s, tt).tobytes())
        else:  # the error must be that of a code of this many bits
            bits = {Q.Q4_K: 4, Q.Q5_K: 5, Q.Q6_K: 6, Q.Q5_0: 5, Q.Q5_1: 5}[tt]
            got = gguf.quants.dequantize(t.data, tt).reshape(s.shape)
            ok = np.abs(got - s).max() <= 2.5 * np.abs(s).max() / (2 ** (bits - 1))
        if not ok:
            errors.append(f"{tag}: {name} ({tt.name}) values differ from the source")


def write_converter_style(d, ours, out):
    """The model at `d` as convert_hf_to_gguf.py --outtype f32 writes it (keys and tensors as
    above, no llmtune keys); the tokenizer keys are copied from llmtune's own export `ours`."""
    h = hparams(d)
    arch = ARCH[h["model_type"]]
    w = gguf.GGUFWriter(str(out), arch)
    keys = converter_keys(h, 0)
    if keys[0][0] == "rope.scaling.attn_factor":
        w.add_key_value(f"{arch}.{keys[0][0]}", keys[0][2], keys[0][1])
        keys = keys[1:]
    w.add_type("model")
    w.add_name(Path(d).name)
    for k, vtype, value in keys:
        w.add_key_value(k if k.startswith("general.") else f"{arch}.{k}", value, vtype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    r = gguf.GGUFReader(str(ours))
    for name, f in r.fields.items():
        if name.startswith("tokenizer."):
            if f.types[0] == V.ARRAY:
                w.add_key_value(name, f.contents(), V.ARRAY, sub_type=f.types[-1])
            else:
                w.add_key_value(name, f.contents(), f.types[0])
    for name, t in source_tensors(d, h).items():
        w.add_tensor(name, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def logits(d, ids, as_the_file_says=False, q8_0=False):
    """Transformers' logits for the model at `d`.
    as_the_file_says: the model as a converter-written file describes it, with llama.cpp's
    assumptions where the file says nothing — Qwen3 without a sliding window; Gemma 2/3 scaling
    attention by head_dim^-1/2 (below 27B) and sliding on a fixed period of layers.
    q8_0: every matrix the file stores as Q8_0 replaced by gguf-py's Q8_0 round trip of it (blocks
    along GGUF rows: a Conv1D weight's input dimension too)."""
    from transformers import AutoModelForCausalLM
    h = hparams(d)
    extra = {}
    if h["model_type"] in ("gemma2", "gemma3_text"):
        extra["attn_implementation"] = "eager"  # soft-capped scores exist only there
    if as_the_file_says and h["model_type"] == "qwen3":
        extra["layer_types"] = ["full_attention"] * h["num_hidden_layers"]
    if as_the_file_says and h["model_type"] in ("gemma2", "gemma3_text"):
        extra["query_pre_attn_scalar"] = h["head_dim"]
        period = 2 if h["model_type"] == "gemma2" else 6
        extra["layer_types"] = ["sliding_attention" if i % period < period - 1 else "full_attention"
                                for i in range(h["num_hidden_layers"])]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **extra).eval()
    if q8_0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() < 2 or name.endswith("wpe.weight"):  # GPT-2's positions stay F32
                    continue
                conv1d = h["model_type"] == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight"))
                w = np.ascontiguousarray(p.detach().numpy().T if conv1d else p.detach().numpy())
                w = gguf.quants.dequantize(gguf.quants.quantize(w, Q.Q8_0), Q.Q8_0).reshape(w.shape)
                p.copy_(torch.from_numpy(np.ascontiguousarray(w.T if conv1d else w)))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def verify(req):
    from transformers import AutoTokenizer
    errors = []
    for case in req["files"]:
        check_file(case, errors)
    out = {"errors": errors, "ids": {}, "logits": {}, "q8_0_logits": {}, "converter_logits": {}}
    for m in req["models"]:
        d = Path(req["fixtures"]) / m["name"]
        ids = AutoTokenizer.from_pretrained(d).encode(PROBE)
        out["ids"][m["name"]] = ids
        out["logits"][m["name"]] = logits(d, ids).tolist()
        # What llmtune's own files hold: Qwen3 without its window (the export warns), Gemma with its keys.
        ours = m["name"] in ("qwen3",)
        out["q8_0_logits"][m["name"]] = logits(d, ids, as_the_file_says=ours, q8_0=True).tolist()
        write_converter_style(d, m["ours"], m["converter_style"])
        out["converter_logits"][m["name"]] = logits(d, ids, as_the_file_says=True).tolist()
    return out


if __name__ == "__main__":
    request = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(verify(request)))
