// Layer-by-layer calibration: input statistics of linears, and the sequential driver.
#include "llmtune/model/calibration.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

namespace llmtune::model {

RecordingLinear::RecordingLinear(LinearPtr inner, InputStatsWanted wanted) : inner_(std::move(inner)), wanted_(wanted) {}

at::Tensor RecordingLinear::forward(const at::Tensor& x) const {
  {
    at::NoGradGuard no_grad;
    const int64_t n_in = inner_->in_features();
    // x: (..., I) → (tokens, I) in fp32; a batch (N, T, I) counts N sequences.
    const at::Tensor flat = x.detach().reshape({-1, n_in}).to(at::kFloat);
    const auto opts = flat.options();
    if (wanted_.sq_norms) {
      if (!sq_norms_.defined()) sq_norms_ = at::zeros({n_in}, opts);
      sq_norms_.add_((flat * flat).sum(0));
    }
    if (wanted_.hessian) {
      if (!xtx_.defined()) xtx_ = at::zeros({n_in, n_in}, opts);
      xtx_.addmm_(flat.t(), flat);
    }
    tokens_ += flat.size(0);
    sequences_ += x.dim() >= 3 ? x.size(0) : 1;
  }
  return inner_->forward(x);
}

at::Tensor RecordingLinear::hessian() const {
  if (!xtx_.defined() || sequences_ == 0) return {};
  return xtx_ * (2.0 / static_cast<double>(sequences_));
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
    for (size_t k = 0; k < descs.size(); ++k) {
      const std::string path = model.family().layers_prefix + std::to_string(i) + "." + descs[k].name;
      if (options.skip && options.skip(path)) continue;
      auto recorder = std::make_shared<RecordingLinear>(layer.linears[k], options.wanted);
      layer.linears[k] = recorder;
      linears.push_back({path, &layer.linears[k], recorder});
    }
    // Statistics from the layer as it is; the outputs are discarded (the updated layer makes the next inputs).
    run(i, hidden, next);
    for (auto& l : linears) *l.slot = l.recorder->inner();
    update(i, linears);
    for (auto& l : linears) l.recorder.reset();  // the statistics of this layer are no longer needed
    run(i, hidden, next);
    std::swap(hidden, next);
  }
}

}  // namespace llmtune::model
