// PEFT's regular expressions over module paths ("model.layers.0.self_attn.q_proj"), composed as
// PEFT composes them and run under BoundedRegex's limits (they come from downloaded files).
// Each throws RegexError naming config.where(key) when the pattern does not compile.
#pragma once

#include <string>

#include "llmtune/peft/lora.h"
#include "llmtune/util/regex.h"

namespace llmtune::peft {

// A string target_modules / exclude_modules: re.fullmatch(pattern, path).
BoundedRegex module_regex(const LoraConfig& config, const std::string& pattern, const char* key);
// A rank_pattern / alpha_pattern key (get_pattern_key): re.match(rf"(.*\.)?({key})$", path).
BoundedRegex pattern_key_regex(const LoraConfig& config, const std::string& pattern_key, const char* key);
// The layer index for layers_to_transform, in group "idx": re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.",
// path) for each layers_pattern, or without one re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", path).
BoundedRegex layer_index_regex(const LoraConfig& config, const std::string* layers_pattern);

}  // namespace llmtune::peft
