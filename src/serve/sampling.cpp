// Serve's token choice (see sampling.h). Order as vLLM applies them: repetition penalty (over prompt
// and output), then frequency and presence (over the output), then temperature and truncation.
#include "sampling.h"

#include <ATen/ops/bincount.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/topk.h>

#include <algorithm>
#include <mutex>

#include "llmtune/model/generate.h"

namespace llmtune::serve {

at::Tensor apply_openai_penalties(at::Tensor logits, const std::vector<int64_t>& generated, double presence,
                                  double frequency) {
  if (generated.empty() || (presence == 0 && frequency == 0)) return logits;
  const at::Tensor ids = at::tensor(generated, at::TensorOptions().dtype(at::kLong));
  const at::Tensor counts = at::bincount(ids, {}, logits.size(0)).to(logits.device(), at::kFloat);
  return logits - (counts * frequency + counts.gt(0).to(at::kFloat) * presence);
}

int64_t pick_token(const at::Tensor& logits, const std::vector<int64_t>& history, GenerationJob& job,
                   at::Generator& generator) {
  const bool penalised = job.presence_penalty != 0 || job.frequency_penalty != 0;
  int64_t token;
  if (!penalised) {
    token = model::choose_token(logits, history, job.sampling, generator);
  } else {
    at::Tensor l = logits.to(at::kFloat).clone();
    const model::SamplingParams& s = job.sampling;
    if (s.repetition_penalty != 1.0) {  // here, so that it comes before the OpenAI penalties
      const at::Tensor idx = at::tensor(history, at::TensorOptions().dtype(at::kLong)).to(l.device());
      at::Tensor score = l.gather(0, idx);
      score = at::where(score < 0, score * s.repetition_penalty, score / s.repetition_penalty);
      l.scatter_(0, idx, score);
    }
    const std::vector<int64_t> generated(history.begin() + static_cast<std::ptrdiff_t>(job.prompt.size()), history.end());
    l = apply_openai_penalties(l, generated, job.presence_penalty, job.frequency_penalty);
    model::SamplingParams rest = s;
    rest.repetition_penalty = 1.0;
    token = model::choose_token(l, history, rest, generator);
  }
  const auto& stops = job.sampling.stop_ids;
  if (job.logprobs >= 0 && std::find(stops.begin(), stops.end(), token) == stops.end()) {
    const at::Tensor lp = logits.to(at::kFloat).log_softmax(0).cpu();
    GenerationJob::TokenLogprob entry{token, lp[token].item<double>(), {}};
    if (job.logprobs > 0) {
      auto [values, indices] = at::topk(lp, std::min<int64_t>(job.logprobs, lp.size(0)));
      for (int64_t i = 0; i < values.size(0); ++i)
        entry.top.emplace_back(indices[i].item<int64_t>(), values[i].item<double>());
    }
    std::lock_guard lock(job.mutex);  // a streaming HTTP thread reads them as they come
    job.token_logprobs.push_back(std::move(entry));
  }
  return token;
}

}  // namespace llmtune::serve
