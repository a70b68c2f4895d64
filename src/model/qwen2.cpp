// Qwen2/2.5: q/k/v always carry a bias (o_proj none); sliding windows only on layers that
// layer_types (transformers 5) or use_sliding_window + max_window_layers (4.x) mark.
#include <nlohmann/json.hpp>

#include "families.h"
#include "llmtune/util/error.h"

namespace llmtune::model {

FamilyDesc qwen2_family() {
  FamilyDesc f = llama_layout("qwen2");
  f.gguf.arch = "qwen2";
  f.gguf.permute_qk = false;
  f.gguf.keys = GgufKeys::Text;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    c.qkv_bias = true;
    c.o_bias = false;
    auto sw = j.find("sliding_window");
    int64_t window = sw != j.end() && sw->is_number_integer() ? sw->get<int64_t>() : 0;
    if (auto it = j.find("layer_types"); it != j.end() && it->is_array()) {
      if (static_cast<int64_t>(it->size()) != c.n_layers)
        throw ModelLoadError(source + ": 'layer_types' has " + std::to_string(it->size()) + " entries for " +
                             std::to_string(c.n_layers) + " layers");
      for (int64_t i = 0; i < c.n_layers; ++i)
        c.sliding_window_per_layer[i] = (*it)[i] == "sliding_attention" ? window : 0;
      return;
    }
    auto use = j.find("use_sliding_window");
    if (use != j.end() && use->is_boolean() && use->get<bool>() && window > 0) {
      auto mwl = j.find("max_window_layers");
      int64_t first = mwl != j.end() && mwl->is_number_integer() ? mwl->get<int64_t>() : c.n_layers;
      for (int64_t i = first; i < c.n_layers; ++i) c.sliding_window_per_layer[i] = window;
    }
  };
  return f;
}

}  // namespace llmtune::model
