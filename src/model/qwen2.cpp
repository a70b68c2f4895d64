// Qwen2/2.5: q/k/v always carry a bias (o_proj none); sliding windows only on layers that
// layer_types (transformers 5) or use_sliding_window + max_window_layers (4.x) mark.
#include <nlohmann/json.hpp>

#include "families.h"
#include "llmtune/util/error.h"

namespace llmtune::model {

bool windows_from_layer_types(ModelConfig& c, const nlohmann::json& j, int64_t window, const std::string& source) {
  auto it = j.find("layer_types");
  if (it == j.end() || !it->is_array()) return false;
  if (static_cast<int64_t>(it->size()) != c.n_layers)
    throw ModelLoadError(source + ": 'layer_types' has " + std::to_string(it->size()) + " entries for " +
                         std::to_string(c.n_layers) + " layers");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const auto& t = (*it)[i];
    if (t != "sliding_attention" && t != "full_attention")
      throw ModelLoadError(source + ": 'layer_types' entry " + std::to_string(i) + " is " + t.dump() +
                           " (supported: \"full_attention\", \"sliding_attention\")");
    c.sliding_window_per_layer[i] = t == "sliding_attention" ? window : 0;
  }
  return true;
}

namespace {

// Qwen2 and Qwen3 mark their sliding layers the same way.
void qwen_windows(ModelConfig& c, const nlohmann::json& j, const std::string& source) {
  auto sw = j.find("sliding_window");
  int64_t window = sw != j.end() && sw->is_number_integer() ? sw->get<int64_t>() : 0;
  auto use = j.find("use_sliding_window");
  const bool used = use != j.end() && use->is_boolean() && use->get<bool>();
  // transformers 5 writes layer_types from use_sliding_window; a config without it has no windows.
  if (windows_from_layer_types(c, j, used ? window : 0, source)) return;
  if (used && window > 0) {
    auto mwl = j.find("max_window_layers");
    int64_t first = mwl != j.end() && mwl->is_number_integer() ? mwl->get<int64_t>() : c.n_layers;
    for (int64_t i = first; i < c.n_layers; ++i) c.sliding_window_per_layer[i] = window;
  }
}

}  // namespace

FamilyDesc qwen2_family() {
  FamilyDesc f = llama_layout("qwen2");
  f.gguf.arch = "qwen2";
  f.gguf.permute_qk = false;
  f.gguf.keys = GgufKeys::Text;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    c.qkv_bias = true;
    c.o_bias = false;
    qwen_windows(c, j, source);
  };
  return f;
}

// Qwen3: Llama plus an RMSNorm over each query and key head before RoPE; biases only when
// attention_bias says so (on q, k, v and o alike).
FamilyDesc qwen3_family() {
  FamilyDesc f = llama_layout("qwen3");
  f.norms.push_back({NormRole::QHead, "self_attn.q_norm", "attn_q_norm"});
  f.norms.push_back({NormRole::KHead, "self_attn.k_norm", "attn_k_norm"});
  f.gguf.arch = "qwen3";
  f.gguf.permute_qk = false;
  f.gguf.keys = GgufKeys::Text;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) { qwen_windows(c, j, source); };
  return f;
}

}  // namespace llmtune::model
