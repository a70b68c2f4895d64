"""RoPE references for tests/model/test_rope_scaling.cpp: transformers' own rotary code
(ROPE_INIT_FUNCTIONS, the models' RotaryEmbedding classes with their dynamic_rope_update, Phi-3's
partial apply_rotary_pos_emb) on a config built from the test's parameters."""
import torch


def _config(model_type, config):
    import transformers as tf
    cls = {"llama": tf.LlamaConfig, "phi3": tf.Phi3Config}[model_type]
    return cls(**config)


def _rotary(model_type, config):
    if model_type == "phi3":
        from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
        return Phi3RotaryEmbedding(config)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    return LlamaRotaryEmbedding(config)


def rope_reference(positions, config, model_type="llama", seq_len=None):
    """For positions (B, T) int64: [inv_freq and attention scaling from ROPE_INIT_FUNCTIONS (or the
    model's default) at seq_len, float64 scaling; then cos, sin and the inv_freq the rotary module's
    forward used (after dynamic_rope_update), and its attention scaling]. A fresh module per call,
    so the dynamic state starts from __init__."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = _config(model_type, config)
    rotary = _rotary(model_type, cfg)
    rope_type = cfg.rope_parameters["rope_type"]
    if rope_type == "default":
        inv_freq, scaling = rotary.compute_default_rope_parameters(cfg)
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, None, seq_len=seq_len)
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(x, positions)
    return [inv_freq, torch.tensor([scaling], dtype=torch.float64), cos, sin, rotary.inv_freq.clone(),
            torch.tensor([rotary.attention_scaling], dtype=torch.float64)]


def rope_reference_cases(*positions, cases):
    """rope_reference for each case {config, model_type?, seq_len?} on its positions, in one
    process: six outputs per case."""
    out = []
    for pos, case in zip(positions, cases):
        out += rope_reference(pos, case["config"], case.get("model_type", "llama"), case.get("seq_len"))
    return out


def rope_apply_partial(x, *tables):
    """Phi-3's apply_rotary_pos_emb on x (B, H, T, D) for each (cos, sin) pair in tables, each
    (B, T, R) with R <= D: one output per pair."""
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb
    return [apply_rotary_pos_emb(x, x, cos, sin)[0] for cos, sin in zip(tables[::2], tables[1::2])]


FUNCTIONS = {f.__name__: f for f in (rope_reference, rope_reference_cases, rope_apply_partial)}
