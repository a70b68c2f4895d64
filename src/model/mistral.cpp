// Mistral: Llama plus an optional sliding window applied to every layer (null in v0.2+). GGUF
// files call it llama, so a GGUF of that architecture loads as the llama family.
#include <nlohmann/json.hpp>

#include "families.h"
#include "llmtune/util/error.h"

namespace llmtune::model {

FamilyDesc mistral_family() {
  FamilyDesc f = llama_layout("mistral");
  f.gguf.loads_arch = false;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string& source) {
    auto it = j.find("sliding_window");
    if (it == j.end() || it->is_null()) return;
    if (!it->is_number_integer() || it->get<int64_t>() <= 0)
      throw ModelLoadError(source + ": 'sliding_window' must be a positive integer or null");
    c.sliding_window_per_layer.assign(static_cast<size_t>(c.n_layers), it->get<int64_t>());
  };
  return f;
}

}  // namespace llmtune::model
