// The next-token choice of a serve request: OpenAI's presence and frequency penalties over the tokens
// generated so far, then model::choose_token; and the log probabilities a request asked for, taken
// from the model's own distribution (log_softmax of the raw logits, before penalties and temperature,
// as vLLM reports them).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine.h"

namespace llmtune::serve {

// logits: (V,); history: prompt + generated (the first job.prompt.size() are the prompt). Records
// the chosen token's log probabilities into job.token_logprobs when asked.
int64_t pick_token(const at::Tensor& logits, const std::vector<int64_t>& history, GenerationJob& job,
                   at::Generator& generator);

// logits[t] -= frequency * count(t) + presence * (count(t) > 0), counts over `generated`.
at::Tensor apply_openai_penalties(at::Tensor logits, const std::vector<int64_t>& generated, double presence,
                                  double frequency);

}  // namespace llmtune::serve
