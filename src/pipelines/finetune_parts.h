// The pieces of finetune's run around its loop: evaluation on the validation batches, and the files
// written next to the result (the base's tokenizer, generation config and config.json; the chat
// template the data was rendered with).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "llmtune/data/batcher.h"
#include "llmtune/data/dataset.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/method.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines {

// Files of the base model directory that a full fine-tune's output needs besides the weights.
void copy_model_files(const std::filesystem::path& from, const std::filesystem::path& to, at::ScalarType saved_dtype);

// The chat template the data was rendered with, when it is not the tokenizer's own (a named
// template or a .jinja file): saved as chat_template.jinja next to the result, so that infer,
// merge and GGUF/Ollama exports keep the layout the model learned. "" when nothing to save.
std::string trained_template_source(const data::Dataset& dataset, const data::DataParams& params,
                                    const tokenizer::Tokenizer& tok);

struct EvalStats {
  double loss = 0, perplexity = 0;
  int64_t targets = 0;
};

// The mean loss over the first max_batches (0: all) validation batches, with one host sync.
// `adapter`: the trained method (its dropout is off while evaluating), or nullptr.
EvalStats evaluate(model::CausalLM& model, data::Batcher& batches, int64_t max_batches, const peft::AdapterMethod* adapter,
                   int64_t chunk_rows);

}  // namespace llmtune::pipelines
