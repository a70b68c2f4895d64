// `llmtune infer`: generation from a model — one prompt, a prompts file (JSONL in, JSONL out), or
// an interactive chat that keeps the conversation.
#pragma once

#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "llmtune/model/generate.h"
#include "llmtune/pipelines/quantize_on_load.h"

namespace llmtune::pipelines {

struct InferParams {
  std::string model;
  std::string adapter;       // "" for none
  std::optional<std::string> prompt;  // one prompt (may be empty: the template alone, or BOS), or
  std::string prompts_file;  // JSONL rows with "prompt" (string) or "messages" (list), written to
  std::string output;        //   this JSONL file, or
  bool chat = false;         // interactive chat on stdin/stdout
  bool raw = false;          // no chat template: the prompt text as is, with the tokenizer's BOS
  std::string system;        // optional system prompt for chat-templated prompts
  std::vector<std::string> stop;  // stop strings (not included in the output)
  model::SamplingParams sampling;
  std::string device = "auto";
  std::string dtype = "auto";
  bool refuse_non_finite = false;  // NaN/inf weights: an error instead of a warning
  QuantizeOnLoad quantize;          // nf4 | fp4 | int8: quantize a 16-bit model while it loads
  bool json = false;  // one JSON object per prompt on stdout instead of streamed text
};

// Runs the job; streamed text and JSON go to `out`, chat input comes from `in`.
void run_infer(const InferParams& params, std::ostream& out, std::istream& in);

}  // namespace llmtune::pipelines
