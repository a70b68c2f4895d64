// GradScaler's update rule with a floor (DeepSpeed's), the gradients unscaled and checked in two multi-tensor kernels.
#include "llmtune/train/loss_scale.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/stack.h>

#include <algorithm>

namespace llmtune::train {

LossScaler::LossScaler(bool enabled, double initial_scale, int64_t growth_interval, double min_scale)
    : enabled_(enabled), scale_(enabled ? initial_scale : 1.0), growth_interval_(growth_interval), min_scale_(min_scale) {}

void LossScaler::restore(double scale, int64_t good_steps) {
  if (!enabled_) return;
  scale_ = scale;
  good_steps_ = good_steps;
}

bool LossScaler::unscale_and_check(const std::vector<NamedParameter>& params) {
  if (!enabled_) return true;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
  if (grads.empty()) return true;
  at::_foreach_mul_(grads, at::Scalar(1.0 / scale_));
  return at::stack(at::_foreach_norm(grads, 2)).isfinite().all().item<bool>();
}

void LossScaler::update(bool overflow) {
  if (!enabled_) return;
  if (overflow) {
    scale_ = std::max(scale_ * 0.5, min_scale_);
    good_steps_ = 0;
  } else if (++good_steps_ >= growth_interval_) {
    scale_ *= 2.0;
    good_steps_ = 0;
  }
}

}  // namespace llmtune::train
