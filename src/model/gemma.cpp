// Gemma: RMSNorm with (1 + w), embeddings scaled by sqrt(hidden_size), GeGLU with the tanh GELU,
// tied embeddings. transformers 4.x wrote the activation as hidden_activation (hidden_act "gelu").
// GGUF stores every norm as 1 + w and never writes output.weight.
//
// Gemma 2 adds sandwich norms (each block's output normed before its residual add), soft-capped
// attention scores and final logits, query_pre_attn_scalar as the attention scale, and sliding
// windows on every other layer (from layer 0). Gemma 3 (text) drops the soft-caps by default, adds
// per-head q/k norms, five sliding layers per global one, and gives the sliding layers their own
// unscaled RoPE base (rope_local_base_freq).
#include <nlohmann/json.hpp>

#include <cmath>

#include "families.h"
#include "llmtune/util/error.h"

namespace llmtune::model {

void configure_gemma(ModelConfig& c, const nlohmann::json& j) {
  c.norm_unit_offset = true;
  c.scale_embeddings = true;
  if (auto it = j.find("hidden_activation"); it != j.end() && it->is_string()) c.hidden_act = it->get<std::string>();
  else if (c.hidden_act == "gelu") c.hidden_act = "gelu_pytorch_tanh";
  if (!j.contains("tie_word_embeddings")) c.tie_word_embeddings = true;
}

namespace {

// A non-negative number or null (0) from config.json.
double optional_real(const nlohmann::json& j, const char* key, double fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return 0;
  if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < 0)
    throw ModelLoadError(source + ": '" + key + "' must be a non-negative number or null, got " + it->dump());
  return it->get<double>();
}

int64_t window_of(const nlohmann::json& j, int64_t fallback, const std::string& source) {
  auto it = j.find("sliding_window");
  if (it == j.end()) return fallback;
  if (it->is_null()) return 0;
  if (!it->is_number_integer() || it->get<int64_t>() <= 0)
    throw ModelLoadError(source + ": 'sliding_window' must be a positive integer or null, got " + it->dump());
  return it->get<int64_t>();
}

// Gemma 2 and 3: Gemma's switches, the attention scale, the soft-caps (their defaults differ) and
// the sliding window; returns the window.
int64_t configure_sandwich(ModelConfig& c, const nlohmann::json& j, double attn_cap, double final_cap,
                           const std::string& source) {
  configure_gemma(c, j);
  c.query_pre_attn_scalar = optional_real(j, "query_pre_attn_scalar", 256, source);
  c.attn_logit_softcap = optional_real(j, "attn_logit_softcapping", attn_cap, source);
  c.final_logit_softcap = optional_real(j, "final_logit_softcapping", final_cap, source);
  return window_of(j, 4096, source);
}

FamilyDesc sandwich_layout(std::string model_type) {
  FamilyDesc f = llama_layout(std::move(model_type));
  f.norms = {{NormRole::Input, "input_layernorm", "attn_norm"},
             {NormRole::AttnOut, "post_attention_layernorm", "post_attention_norm"},
             {NormRole::PostAttention, "pre_feedforward_layernorm", "ffn_norm"},
             {NormRole::MlpOut, "post_feedforward_layernorm", "post_ffw_norm"}};
  f.gguf.permute_qk = false;
  f.gguf.norm_plus_one = true;
  f.gguf.drop_lm_head = true;
  return f;
}

}  // namespace

FamilyDesc gemma_family() {
  FamilyDesc f = llama_layout("gemma");
  f.gguf.arch = "gemma";
  f.gguf.permute_qk = false;
  f.gguf.keys = GgufKeys::Gemma;
  f.gguf.norm_plus_one = true;
  f.gguf.drop_lm_head = true;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string&) { configure_gemma(c, j); };
  return f;
}

FamilyDesc gemma2_family() {
  FamilyDesc f = sandwich_layout("gemma2");
  f.gguf.arch = "gemma2";
  f.gguf.keys = GgufKeys::Gemma2;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    const int64_t window = configure_sandwich(c, j, 50, 30, source);
    if (!windows_from_layer_types(c, j, window, source))
      for (int64_t i = 0; i < c.n_layers; i += 2) c.sliding_window_per_layer[i] = window;  // 4.x: even layers
  };
  return f;
}

FamilyDesc gemma3_family() {
  FamilyDesc f = sandwich_layout("gemma3_text");
  f.norms.push_back({NormRole::QHead, "self_attn.q_norm", "attn_q_norm"});
  f.norms.push_back({NormRole::KHead, "self_attn.k_norm", "attn_k_norm"});
  f.gguf.arch = "gemma3";
  f.gguf.keys = GgufKeys::Gemma3;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    const int64_t window = configure_sandwich(c, j, 0, 0, source);
    if (!windows_from_layer_types(c, j, window, source)) {
      // 4.x: every sliding_window_pattern-th layer (1-based) is global.
      auto it = j.find("sliding_window_pattern");
      const int64_t pattern = it != j.end() && it->is_number_integer() && it->get<int64_t>() > 0 ? it->get<int64_t>() : 6;
      for (int64_t i = 0; i < c.n_layers; ++i) c.sliding_window_per_layer[i] = (i + 1) % pattern ? window : 0;
    }
    // RoPE: transformers 5 keeps one rope_parameters entry per layer type; 4.x a global
    // rope_theta / rope_scaling and rope_local_base_freq for the sliding layers.
    auto rp = j.find("rope_parameters");
    if (rp != j.end() && rp->is_object() && rp->contains("full_attention")) {
      c.rope = parse_rope_json({{"rope_parameters", (*rp)["full_attention"]}}, source + " rope_parameters.full_attention");
      if (rp->contains("sliding_attention"))
        c.rope_local = parse_rope_json({{"rope_parameters", (*rp)["sliding_attention"]}}, source + " rope_parameters.sliding_attention");
    } else {
      RopeConfig local;
      local.theta = optional_real(j, "rope_local_base_freq", 10000, source);
      if (local.theta <= 0) throw ModelLoadError(source + ": 'rope_local_base_freq' must be > 0");
      c.rope_local = local;
    }
  };
  return f;
}

}  // namespace llmtune::model
