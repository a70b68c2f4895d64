// Gemma: RMSNorm with (1 + w), embeddings scaled by sqrt(hidden_size), GeGLU with the tanh GELU,
// tied embeddings. transformers 4.x wrote the activation as hidden_activation (hidden_act "gelu").
// GGUF stores every norm as 1 + w and never writes output.weight.
#include <nlohmann/json.hpp>

#include "families.h"

namespace llmtune::model {

FamilyDesc gemma_family() {
  FamilyDesc f = llama_layout("gemma");
  f.gguf.arch = "gemma";
  f.gguf.permute_qk = false;
  f.gguf.keys = GgufKeys::Gemma;
  f.gguf.norm_plus_one = true;
  f.gguf.drop_lm_head = true;
  f.configure = [](ModelConfig& c, const nlohmann::json& j, const std::string&) {
    c.norm_unit_offset = true;
    c.scale_embeddings = true;
    if (auto it = j.find("hidden_activation"); it != j.end() && it->is_string()) c.hidden_act = it->get<std::string>();
    else if (c.hidden_act == "gelu") c.hidden_act = "gelu_pytorch_tanh";
    if (!j.contains("tie_word_embeddings")) c.tie_word_embeddings = true;
  };
  return f;
}

}  // namespace llmtune::model
