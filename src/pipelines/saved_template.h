// The chat template a finetune saves next to its adapter (<adapter>/chat_template.jinja), found
// for the commands that load that adapter, so they render prompts the way the model was trained.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace llmtune::pipelines {

// `adapter` as --adapter takes it (a PEFT adapter directory, a finetune run directory whose adapter
// is in adapter/, or a hub repo id): the path of its chat_template.jinja; nullopt when "" or absent.
std::optional<std::filesystem::path> saved_chat_template(const std::string& adapter);

}  // namespace llmtune::pipelines
