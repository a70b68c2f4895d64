// Llama 1/2/3/3.1/3.2 and TinyLlama: the shared defaults are Llama's; nothing further differs.
#include <nlohmann/json.hpp>

#include "llmtune/model/config.h"

namespace llmtune::model {

void configure_llama(ModelConfig&, const nlohmann::json&, const std::string&) {}

}  // namespace llmtune::model
