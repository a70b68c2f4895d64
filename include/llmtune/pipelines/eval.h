// `llmtune eval`: token-weighted mean next-token loss and perplexity of a model on a dataset.
#pragma once

#include <cstdint>
#include <string>

#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/quantize_on_load.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines {

struct EvalParams {
  std::string model;    // directory or Hugging Face cache repo id
  std::string adapter;  // "" for none (LoRA adapters arrive with finetune)
  // .txt (one token stream, split into windows) or .jsonl/.json: rows with "text" score every
  // token; instruction/chat rows (finetune's formats) score the assistant tokens only.
  std::string data;
  std::string format = "auto";         // as finetune's data.format
  std::string chat_template = "auto";  // as finetune's data.template
  int64_t max_seq_len = 2048;
  int64_t batch_size = 8;
  std::string device = "auto";
  std::string dtype = "auto";
  bool refuse_non_finite = false;  // NaN/inf weights: an error instead of a warning
  QuantizeOnLoad quantize;          // nf4 | fp4 | int8: quantize a 16-bit model while it loads
};

struct EvalResult {
  double loss = 0;        // mean over every predicted position
  double perplexity = 0;  // exp(loss)
  int64_t tokens = 0;     // positions scored
  int64_t sequences = 0;  // windows or rows evaluated
  double load_seconds = 0, eval_seconds = 0;
  double tokens_per_second = 0;
  std::string device, dtype;
};

EvalResult run_eval(const EvalParams& params);

// The same on a model already in memory (params.model, adapter, device, dtype, quantize unused):
// e.g. quantize's GPTQ result before any loader reads it back.
EvalResult eval_model(const EvalParams& params, const model::CausalLM& model, const tokenizer::Tokenizer& tokenizer);

}  // namespace llmtune::pipelines
