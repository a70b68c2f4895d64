// Autoregressive generation with a KV cache: greedy or sampled (temperature, top-k, top-p, min-p,
// repetition penalty — applied in transformers' order), streaming each token to a callback.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"

namespace llmtune::model {

struct SamplingParams {
  int64_t max_new_tokens = 256;
  double temperature = 0.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // 1: off
  double min_p = 0.0;        // 0: off
  double repetition_penalty = 1.0;  // 1: off
  uint64_t seed = 42;
  std::vector<int64_t> stop_ids;  // generation ends after emitting one of these
};

struct GenerationResult {
  std::vector<int64_t> tokens;   // generated ids (a stop id, when hit, is included)
  std::string finish_reason;     // "stop" (stop id or callback) | "length"
  double prompt_seconds = 0;     // prefill wall time
  double decode_seconds = 0;     // wall time of the remaining steps
};

// Picks the next id from a step's logits ((V,), the model's dtype) and the ids so far.
using TokenChooser = std::function<int64_t(const at::Tensor& logits, const std::vector<int64_t>& history,
                                           at::Generator& generator)>;

// on_token: called with each new id; returning false stops generation. choose: replaces
// choose_token (serve's penalties and log probabilities).
GenerationResult generate(const CausalLM& model, const std::vector<int64_t>& prompt, const SamplingParams& params,
                          const std::function<bool(int64_t)>& on_token = {}, const TokenChooser& choose = {});

// The next-token choice on logits: (V,) float32 → id. `history` feeds the repetition penalty.
int64_t choose_token(at::Tensor logits, const std::vector<int64_t>& history, const SamplingParams& params,
                     at::Generator& generator);

}  // namespace llmtune::model
