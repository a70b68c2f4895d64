// The built-in families, one description file each (llama.cpp, mistral.cpp, qwen2.cpp, qwen3.cpp,
// gemma.cpp, gemma2.cpp, gemma3.cpp, phi3.cpp, gpt2.cpp):
// the registry in family.cpp lists them. A new family is a new file plus one line there.
#pragma once

#include "llmtune/model/family.h"

namespace llmtune::model {

FamilyDesc llama_family();
FamilyDesc mistral_family();
FamilyDesc qwen2_family();
FamilyDesc qwen3_family();
FamilyDesc gemma_family();
FamilyDesc gemma2_family();
FamilyDesc gemma3_family();
FamilyDesc phi3_family();
FamilyDesc gpt2_family();

// Gemma 1's switches (norm offset, embedding scale, tanh GELU, tied embeddings), shared by 2 and 3.
void configure_gemma(ModelConfig& c, const nlohmann::json& j);
// Per-layer sliding windows from transformers 5's layer_types ("sliding_attention" layers get
// `window`); false when the config has none. ModelLoadError on a length mismatch.
bool windows_from_layer_types(ModelConfig& c, const nlohmann::json& j, int64_t window, const std::string& source);

}  // namespace llmtune::model
