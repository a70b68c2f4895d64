// `llmtune validate`: everything a finetune or distill run checks before its first step (model
// directory, weights' shapes and dtypes from the safetensors headers, tokenizer, chat template,
// every dataset row, memory, steps), and what prune, quantize, eval and serve meet before they
// start (model, adapters, calibration and evaluation data, the output path), with every problem
// collected instead of stopping at the first. Never trains, never loads model weights, never writes.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/pipelines/finetune.h"

namespace llmtune::pipelines {

struct ValidateReport {
  std::string command;                // finetune | distill | prune | quantize | eval | serve
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

// What prune, quantize, eval and serve read before they start, from their own parameters.
struct CommandInputs {
  std::string model;  // a directory, a Hugging Face cache repo id, or (serve) a .gguf file; "" when unset
  struct Adapter {
    std::string key, path;  // key: the config key naming it ("adapter", "adapters[demo-lora]")
  };
  std::vector<Adapter> adapters;
  // The path the command writes: "dir" (a directory), "gguf" (a .gguf file), "" (none: eval, serve).
  std::string output, output_kind;
  bool force = false;
  // Calibration text (windows > 0: that many windows of seq_len tokens are cut from it) or
  // evaluation data (windows 0: rows truncated, or a .txt split, at seq_len tokens).
  struct Data {
    std::string key, path, format = "auto", chat_template = "auto";
    int64_t seq_len = 0;  // 0: min(512, the model's positions)
    int64_t windows = 0;
    uint64_t seed = 42;
  };
  std::vector<Data> data;
  std::string device = "auto", dtype = "auto";
};

// Adds the model (config, weights from the safetensors headers, tokenizer), the adapters (readable,
// their modules present in the model with their shapes), the data (rows, tokens, windows) and the
// output path (would the command refuse it?) to `report`.
void validate_command(const CommandInputs& in, ValidateReport& report);

}  // namespace llmtune::pipelines
