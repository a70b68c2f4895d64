// Phi-3 / Phi-4: Llama's block with fused projections — qkv_proj holds q, k and v, gate_up_proj
// holds gate then up — an optional sliding window on every layer, and RoPE that may be partial
// (Phi-4-mini) or longrope-scaled (the 128k models; parsed with the rest of RoPE in config.cpp).
// GGUF keeps the fused tensors (attn_qkv, ffn_up).
#include <nlohmann/json.hpp>

#include "families.h"
#include "llmtune/util/error.h"

namespace llmtune::model {

FamilyDesc phi3_family() {
  FamilyDesc f = llama_layout("phi3");
  f.linears = {{"self_attn.qkv_proj", "attn_qkv", {Proj::Q, Proj::K, Proj::V}},
               {"self_attn.o_proj", "attn_output", {Proj::O}},
               {"mlp.gate_up_proj", "ffn_up", {Proj::Gate, Proj::Up}},
               {"mlp.down_proj", "ffn_down", {Proj::Down}}};
  f.gguf.arch = "phi3";
  f.gguf.permute_qk = false;
  f.gguf.keys = GgufKeys::Phi3;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    auto it = j.find("sliding_window");
    if (it == j.end() || it->is_null()) return;
    if (!it->is_number_integer() || it->get<int64_t>() <= 0)
      throw ModelLoadError(source + ": 'sliding_window' must be a positive integer or null, got " + it->dump());
    c.sliding_window_per_layer.assign(static_cast<size_t>(c.n_layers), it->get<int64_t>());
  };
  return f;
}

}  // namespace llmtune::model
