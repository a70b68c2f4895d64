// The post-processor of tokenizer.json, as the ids it puts around a single sequence.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmtune::tokenizer {

struct SingleTemplate {
  std::vector<int32_t> prefix, suffix;
};

// `file` names tokenizer.json in errors.
SingleTemplate parse_post_processor(const nlohmann::json& j, const std::string& file);

}  // namespace llmtune::tokenizer
