// Layer-by-layer calibration: input statistics of linears, and the sequential driver.
#include "llmtune/model/calibration.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

namespace llmtune::model {

namespace {
// XᵀX is made by blocks of this many columns when the input is wider than two of them.
constexpr int64_t kGramBlock = 512;
bool blocked(int64_t n) { return n > 2 * kGramBlock; }
}  // namespace

void accumulate_gram(at::Tensor& xtx, const at::Tensor& x) {
  const int64_t n = x.size(1);
  if (!blocked(n)) {
    xtx.addmm_(x.t(), x);
    return;
  }
  for (int64_t i = 0; i < n; i += kGramBlock) {
    const int64_t bi = std::min(kGramBlock, n - i);
    const at::Tensor xi = x.narrow(1, i, bi).t();
    for (int64_t j = i; j < n; j += kGramBlock) {
      const int64_t bj = std::min(kGramBlock, n - j);
      xtx.narrow(0, i, bi).narrow(1, j, bj).addmm_(xi, x.narrow(1, j, bj));
    }
  }
}

at::Tensor symmetric_gram(const at::Tensor& xtx) {
  const int64_t n = xtx.size(0);
  if (!blocked(n)) return xtx.clone();
  at::Tensor out = xtx.clone();
  for (int64_t i = 0; i < n; i += kGramBlock)
    for (int64_t j = i + kGramBlock; j < n; j += kGramBlock) {
      const int64_t bi = std::min(kGramBlock, n - i), bj = std::min(kGramBlock, n - j);
      out.narrow(0, j, bj).narrow(1, i, bi).copy_(out.narrow(0, i, bi).narrow(1, j, bj).t());
    }
  return out;
}

std::shared_ptr<InputStats> SharedInputs::bind(const at::Tensor& x) {
  for (const auto& s : stats_)
    if (s->last.defined() && s->last.is_same(x) && s->last._version() == x._version()) return s;
  return stats_.emplace_back(std::make_shared<InputStats>());
}

RecordingLinear::RecordingLinear(LinearPtr inner, InputStatsWanted wanted, std::shared_ptr<SharedInputs> shared)
    : inner_(std::move(inner)), wanted_(wanted), shared_(std::move(shared)) {}

at::Tensor RecordingLinear::forward(const at::Tensor& x) const {
  {
    at::NoGradGuard no_grad;
    if (!stats_) stats_ = shared_ ? shared_->bind(x) : std::make_shared<InputStats>();
    InputStats& s = *stats_;
    // Another reader of this very tensor accumulated it already (q before k and v).
    const bool counted = s.inputs == seen_ + 1 && s.last.is_same(x) && s.last._version() == x._version();
    if (!counted) {
      TORCH_CHECK(s.inputs == seen_, "RecordingLinear: linears that shared an input were later given different ones");
      const int64_t n_in = inner_->in_features();
      // x: (..., I) → (tokens, I) in fp32; a batch (N, T, I) counts N sequences.
      const at::Tensor flat = x.detach().reshape({-1, n_in}).to(at::kFloat);
      const auto opts = flat.options();
      if (wanted_.sq_norms) {
        if (!s.sq_norms.defined()) s.sq_norms = at::zeros({n_in}, opts);
        s.sq_norms.add_((flat * flat).sum(0));
      }
      if (wanted_.hessian) {
        if (!s.xtx.defined()) s.xtx = at::zeros({n_in, n_in}, opts);
        accumulate_gram(s.xtx, flat);
      }
      s.tokens += flat.size(0);
      s.sequences += x.dim() >= 3 ? x.size(0) : 1;
      s.last = x;
      ++s.inputs;
    }
    ++seen_;
  }
  return inner_->forward(x);
}

at::Tensor RecordingLinear::hessian() const {
  if (!stats_ || !stats_->xtx.defined() || stats_->sequences == 0) return {};
  return symmetric_gram(stats_->xtx).mul_(2.0 / static_cast<double>(stats_->sequences));
}

void run_layerwise(CausalLM& model, at::Tensor hidden,
                   const LayerwiseOptions& options,
                   const std::function<void(int64_t layer, std::vector<CalibratedLinear>& linears)>& update) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(hidden.dim() == 3, "run_layerwise: hidden states must be (sequences, tokens, hidden)");
  const int64_t n = hidden.size(0), t = hidden.size(1);
  const int64_t per_forward = std::max<int64_t>(1, options.tokens_per_forward / std::max<int64_t>(1, t));
  // Runs layer i over all sequences, a few at a time; the outputs are written over `out`.
  auto run = [&](int64_t i, const at::Tensor& in, at::Tensor& out) {
    for (int64_t s = 0; s < n; s += per_forward) {
      const int64_t k = std::min(per_forward, n - s);
      out.narrow(0, s, k).copy_(model.forward_layer(i, in.narrow(0, s, k)));
    }
  };
  at::Tensor next = at::empty_like(hidden);
  const auto& descs = model.family().linears;
  for (int64_t i = 0; i < static_cast<int64_t>(model.layers().size()); ++i) {
    DecoderLayer& layer = model.layers()[static_cast<size_t>(i)];
    std::vector<CalibratedLinear> linears;
    auto shared = std::make_shared<SharedInputs>();
    for (size_t k = 0; k < descs.size(); ++k) {
      const std::string path = model.family().layers_prefix + std::to_string(i) + "." + descs[k].name;
      if (options.skip && options.skip(path)) continue;
      auto recorder = std::make_shared<RecordingLinear>(layer.linears[k], options.wanted, shared);
      layer.linears[k] = recorder;
      linears.push_back({path, &layer.linears[k], recorder});
    }
    // Statistics from the layer as it is; the outputs are discarded (the updated layer makes the next inputs).
    run(i, hidden, next);
    for (auto& l : linears) *l.slot = l.recorder->inner();
    update(i, linears);
    for (auto& l : linears) l.recorder.reset();  // the statistics of this layer are no longer needed
    shared.reset();
    run(i, hidden, next);
    std::swap(hidden, next);
  }
}

}  // namespace llmtune::model
