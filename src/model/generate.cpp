// Generation loop and token choice. The logits processors follow transformers' definitions
// (RepetitionPenalty, Temperature, TopK, TopP, MinP) in the order generate() applies them.
#include "llmtune/model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/full.h>
#include <ATen/ops/multinomial.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::model {
int64_t choose_token(at::Tensor logits, const std::vector<int64_t>& history, const SamplingParams& p,
                     at::Generator& generator) {
  logits = logits.to(at::kFloat).clone();
  const double neg_inf = -std::numeric_limits<double>::infinity();
  if (p.repetition_penalty != 1.0 && !history.empty()) {
    at::Tensor idx = at::tensor(history, at::TensorOptions().dtype(at::kLong)).to(logits.device());
    at::Tensor score = logits.gather(0, idx);
    score = at::where(score < 0, score * p.repetition_penalty, score / p.repetition_penalty);
    logits.scatter_(0, idx, score);
  }
  if (p.temperature <= 0.0) return logits.argmax().item<int64_t>();

  // A temperature so small that the division overflows (or the float32 scalar underflows to 0)
  // puts all the probability on the largest logit: that is greedy.
  at::Tensor scaled = logits / p.temperature;
  if (!std::isfinite(scaled.max().item<double>())) return logits.argmax().item<int64_t>();
  logits = scaled;
  if (p.top_k > 0 && p.top_k < logits.size(0)) {
    double kth = std::get<0>(at::topk(logits, p.top_k)).min().item<double>();
    logits.masked_fill_(logits < kth, neg_inf);
  }
  if (p.top_p < 1.0) {
    auto [sorted, order] = at::sort(logits, /*dim=*/0, /*descending=*/false);
    at::Tensor cumulative = sorted.softmax(0).cumsum(0);
    at::Tensor remove_sorted = cumulative <= (1.0 - p.top_p);
    remove_sorted[-1] = false;  // keep at least the most likely token
    at::Tensor remove = remove_sorted.scatter(0, order, remove_sorted);
    logits.masked_fill_(remove, neg_inf);
  }
  if (p.min_p > 0.0) {
    at::Tensor probs = logits.softmax(0);
    logits.masked_fill_(probs < probs.max() * p.min_p, neg_inf);
  }
  at::Tensor probs = logits.softmax(0);
  return at::multinomial(probs.cpu(), 1, false, generator).item<int64_t>();
}

GenerationResult generate(const CausalLM& model, const std::vector<int64_t>& prompt, const SamplingParams& params,
                          const std::function<bool(int64_t)>& on_token, const TokenChooser& choose) {
  if (prompt.empty()) throw Error("generate: the prompt is empty (no tokens)");
  GenerationResult result;
  // The KV cache is allocated up front: never beyond the model's context (transformers warns and
  // stops at max_length the same way), so a huge max_new_tokens cannot exhaust memory.
  const auto n_prompt = static_cast<int64_t>(prompt.size());
  // Dynamic NTK RoPE stretches past max_position_embeddings (transformers does not stop there);
  // the cache's memory is still checked before it is allocated.
  const int64_t context = model.config().rope.type == "dynamic" ? std::numeric_limits<int64_t>::max() / 2
                                                                 : model.config().max_position_embeddings;
  if (n_prompt >= context)
    throw DataError("the prompt has " + std::to_string(n_prompt) + " tokens, the model's context (max_position_embeddings) is " +
                    std::to_string(context) + ": shorten the prompt");
  int64_t max_new_tokens = params.max_new_tokens;
  if (max_new_tokens > context - n_prompt) {
    spdlog::warn("generate: prompt ({} tokens) + max_new_tokens ({}) exceeds the model's context ({}); generating at most {} tokens",
                 n_prompt, max_new_tokens, context, context - n_prompt);
    max_new_tokens = context - n_prompt;
  }
  KVCache cache = model.make_cache(1, n_prompt + max_new_tokens);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(params.seed);
  std::vector<int64_t> history = prompt;

  auto t0 = std::chrono::steady_clock::now();
  at::Tensor ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  result.finish_reason = "length";
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    ForwardOptions options;
    options.cache = &cache;
    at::Tensor hidden = model.forward_hidden(ids, options);
    at::Tensor logits = model.logits(hidden.select(1, hidden.size(1) - 1)).squeeze(0);
    if (step == 0) {
      result.prompt_seconds = seconds_since(t0);
      t0 = std::chrono::steady_clock::now();
    }
    int64_t next = choose ? choose(logits, history, generator) : choose_token(logits, history, params, generator);
    result.tokens.push_back(next);
    history.push_back(next);
    bool is_stop = std::find(params.stop_ids.begin(), params.stop_ids.end(), next) != params.stop_ids.end();
    bool keep_going = on_token ? on_token(next) : true;
    if (is_stop || !keep_going) {
      result.finish_reason = "stop";
      break;
    }
    ids = at::full({1, 1}, next, at::TensorOptions().dtype(at::kLong));
    // Longrope switches to its long factors past the original context: the cached keys were
    // rotated with the short ones, so the whole sequence is recomputed once there (as
    // transformers' Phi-3 generate drops its cache at that point).
    const int64_t switch_at = model.rope_switch_length();
    if (switch_at > 0 && static_cast<int64_t>(history.size()) > switch_at && cache.length() <= switch_at) {
      cache.reset();
      ids = at::tensor(history, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
    }
  }
  result.decode_seconds = seconds_since(t0);
  return result;
}

}  // namespace llmtune::model
