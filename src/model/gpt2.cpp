// GPT-2: learned absolute positions (wpe) instead of RoPE, LayerNorms with a bias, an ungated
// GELU (tanh) MLP, every linear with a bias and stored as Conv1D (in, out), q/k/v fused in c_attn,
// lm_head tied to wte. config.json spells the shared fields its own way (n_embd, n_layer, ...).
#include <nlohmann/json.hpp>

#include <string_view>

#include "families.h"
#include "llmtune/util/error.h"

namespace llmtune::model {

FamilyDesc gpt2_family() {
  FamilyDesc f;
  f.model_type = "gpt2";
  f.layers_prefix = "transformer.h.";
  f.embed = "transformer.wte";
  f.pos_embed = "transformer.wpe";
  f.pos_embed_gguf = "position_embd";
  f.final_norm = "transformer.ln_f";
  f.optional_prefix = "transformer.";
  f.lm_head_optional = true;
  f.layer_norm = true;
  f.conv1d = true;
  f.norms = {{NormRole::Input, "ln_1", "attn_norm"}, {NormRole::PostAttention, "ln_2", "ffn_norm"}};
  f.linears = {{"attn.c_attn", "attn_qkv", {Proj::Q, Proj::K, Proj::V}},
               {"attn.c_proj", "attn_output", {Proj::O}},
               {"mlp.c_fc", "ffn_up", {Proj::Up}},
               {"mlp.c_proj", "ffn_down", {Proj::Down}}};
  f.gguf.arch = "gpt2";
  f.gguf.keys = GgufKeys::Gpt2;
  f.gguf.drop_lm_head = true;
  f.prepare = [](nlohmann::json& j, const std::string& source) {
    for (auto [ours, theirs] : {std::pair{"hidden_size", "n_embd"}, {"num_hidden_layers", "n_layer"},
                                {"num_attention_heads", "n_head"}, {"max_position_embeddings", "n_positions"},
                                {"rms_norm_eps", "layer_norm_epsilon"}, {"hidden_act", "activation_function"}}) {
      if (!j.contains(ours) && j.contains(theirs)) j[ours] = j[theirs];
      // The shape keys are required: name GPT-2's spelling when both are missing.
      if (!j.contains(ours) && std::string_view(theirs).starts_with("n_") && std::string_view(theirs) != "n_positions")
        throw ModelLoadError(source + ": missing '" + theirs + "'");
    }
    if (!j.contains("max_position_embeddings")) j["max_position_embeddings"] = 1024;
    if (!j.contains("rms_norm_eps")) j["rms_norm_eps"] = 1e-5;
    if (!j.contains("hidden_act")) j["hidden_act"] = "gelu_new";
    if (!j.contains("intermediate_size")) {
      auto inner = j.find("n_inner");
      j["intermediate_size"] = inner != j.end() && !inner->is_null() ? *inner
                               : j.contains("hidden_size") && j["hidden_size"].is_number_integer()
                                   ? nlohmann::json(4 * j["hidden_size"].get<int64_t>()) : nlohmann::json();
    }
    j.erase("num_key_value_heads");
    j.erase("head_dim");
  };
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    c.learned_positions = true;
    c.gated_mlp = false;
    c.qkv_bias = c.o_bias = c.mlp_bias = true;
    c.tie_word_embeddings = true;
    for (const char* key : {"scale_attn_by_inverse_layer_idx", "add_cross_attention"})
      if (auto it = j.find(key); it != j.end() && it->is_boolean() && it->get<bool>())
        throw ModelLoadError(source + ": '" + key + "': true is not supported for gpt2");
    if (auto it = j.find("scale_attn_weights"); it != j.end() && it->is_boolean() && !it->get<bool>())
      throw ModelLoadError(source + ": 'scale_attn_weights': false is not supported for gpt2");
  };
  return f;
}

}  // namespace llmtune::model
