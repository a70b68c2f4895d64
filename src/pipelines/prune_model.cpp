// The pruning itself: each decoder linear's weight replaced by its pruned version, scored from the
// weight alone (magnitude) or from calibration statistics gathered layer by layer (wanda, sparsegpt).
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include "llmtune/model/calibration.h"
#include "llmtune/pipelines/prune.h"

namespace llmtune::pipelines {

std::vector<PrunedModule> prune_model(model::CausalLM& model, const PruneSpec& spec, const at::Tensor& calibration_ids) {
  at::NoGradGuard no_grad;
  std::vector<PrunedModule> modules;
  auto count_zeros = [](const at::Tensor& t) { return (t == 0).sum().item<int64_t>(); };
  auto prune_linear = [&](const std::string& path, model::LinearPtr& slot, const model::RecordingLinear* stats) {
    const at::Tensor w = slot->dense_weight();
    at::Tensor out;
    if (spec.method == "sparsegpt") {
      out = sparsegpt_prune(w, stats->hessian(), spec.target, spec.sparsegpt);
    } else {
      const at::Tensor scores = spec.method == "wanda" ? wanda_scores(w, stats->sq_norms()) : magnitude_scores(w);
      const at::Tensor mask = spec.scope == "layer" ? mask_lowest_per_tensor(scores, spec.target.sparsity)
                                                    : mask_lowest_per_row(scores, spec.target);
      out = w.masked_fill(mask, 0.0);
    }
    out = out.to(w.scalar_type()).contiguous();
    modules.push_back({path, w.size(0), w.size(1), count_zeros(w), count_zeros(out)});
    slot = std::make_shared<model::DenseLinear>(out, slot->bias());
  };

  if (spec.method == "magnitude") {
    for (const auto& [path, slot] : model.named_linears())
      if (path != model.family().lm_head && !(spec.skip && spec.skip(path))) prune_linear(path, *slot, nullptr);
    return modules;
  }
  TORCH_CHECK(calibration_ids.defined() && calibration_ids.dim() == 2, "prune_model: ", spec.method,
              " needs calibration ids (sequences, tokens)");
  model::LayerwiseOptions options;
  options.wanted = {.sq_norms = spec.method == "wanda", .hessian = spec.method == "sparsegpt"};
  options.skip = spec.skip;
  options.tokens_per_forward = spec.tokens_per_forward;
  const auto n_layers = model.layers().size();
  model::run_layerwise(model, model.embed(calibration_ids.to(model.device())), options,
                       [&](int64_t layer, std::vector<model::CalibratedLinear>& linears) {
                         for (auto& l : linears) prune_linear(l.path, *l.slot, l.recorder.get());
                         spdlog::info("prune: layer {}/{} ({} linears)", layer + 1, n_layers, linears.size());
                       });
  return modules;
}

}  // namespace llmtune::pipelines
