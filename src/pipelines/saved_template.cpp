// Where a finetune's saved chat template lives for a given --adapter.
#include "saved_template.h"

#include "llmtune/peft/method.h"

namespace llmtune::pipelines {

std::optional<std::filesystem::path> saved_chat_template(const std::string& adapter) {
  if (adapter.empty()) return std::nullopt;
  namespace fs = std::filesystem;
  // A finetune run directory holds its adapter (and the template saved with it) under adapter/.
  const fs::path dir = peft::resolve_adapter_dir(adapter);
  if (!fs::is_regular_file(dir / "chat_template.jinja")) return std::nullopt;
  return dir / "chat_template.jinja";
}

}  // namespace llmtune::pipelines
