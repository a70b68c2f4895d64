// The built-in families, one description file each (llama.cpp, mistral.cpp, qwen2.cpp, gemma.cpp):
// the registry in family.cpp lists them. A new family is a new file plus one line there.
#pragma once

#include "llmtune/model/family.h"

namespace llmtune::model {

FamilyDesc llama_family();
FamilyDesc mistral_family();
FamilyDesc qwen2_family();
FamilyDesc gemma_family();

}  // namespace llmtune::model
