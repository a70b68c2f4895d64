// Llama 1/2/3/3.1/3.2 and TinyLlama: the shared layout is Llama's; nothing further differs.
#include "families.h"

namespace llmtune::model {

FamilyDesc llama_family() { return llama_layout("llama"); }

}  // namespace llmtune::model
