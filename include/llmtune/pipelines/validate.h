// `llmtune validate`: everything a finetune or distill run checks before its first step (model
// directory, weights' shapes and dtypes from the safetensors headers, tokenizer, chat template,
// every dataset row, memory, steps), with every problem collected instead of stopping at the first.
// Never trains, never loads tensor data, never writes anything.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/pipelines/finetune.h"

namespace llmtune::pipelines {

struct ValidateReport {
  std::string command;                // finetune | distill
  std::vector<std::string> problems;  // one line each: where, what is wrong, what to do; a run would not start
  std::vector<std::string> warnings;  // the run would start, but say this (the run's own warnings included)
  nlohmann::ordered_json sections = nlohmann::ordered_json::object();  // model, tokenizer, data, memory, steps

  bool ok() const { return problems.empty(); }
  nlohmann::ordered_json to_json() const;  // {"ok", "command", "problems", "warnings", ...sections}
  std::string to_text() const;             // the readable report; its last line "ok: a run would start" or "N problems"
};

// Adds to `report` what `p` (a finetune or distill run's parameters: p.distill set for distill)
// would meet: the model, tokenizer, data, memory estimate and step count. Problems found earlier (the
// config's) stay in the report; nothing here throws for a problem of the user's inputs.
void validate_training(const FinetuneParams& p, ValidateReport& report);

}  // namespace llmtune::pipelines
