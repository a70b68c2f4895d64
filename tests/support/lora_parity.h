// What the adapter parity tests (LoRA/DoRA on every family, QLoRA) share: transformers' loss, the
// relative error they compare gradients by, and adapter tensors moved as training would move them.
#pragma once

#include <ATen/core/Reduction.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/randn_like.h>

#include <cstdint>
#include <vector>

#include "llmtune/peft/method.h"

namespace llmtune::testing {

// transformers' ForCausalLMLoss: mean fp32 cross-entropy of logits[:, :-1] against labels[:, 1:], -100 ignored.
inline at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t v = logits.size(-1), t = logits.size(1);
  return at::cross_entropy_loss(logits.narrow(1, 0, t - 1).to(at::kFloat).reshape({-1, v}),
                                labels.narrow(1, 1, t - 1).reshape({-1}), {}, at::Reduction::Mean, -100);
}

// ‖a − ref‖ / ‖ref‖ in float64.
inline double rel_err(const at::Tensor& a, const at::Tensor& ref) {
  at::Tensor r = ref.detach().cpu().to(at::kDouble);
  return (a.detach().cpu().to(at::kDouble) - r).norm().item<double>() / r.norm().item<double>();
}

// Adapter tensors as after some training: B non-zero, magnitude moved off ‖W‖.
inline void perturb(const std::vector<peft::NamedTensor>& params, uint64_t seed) {
  at::NoGradGuard no_grad;
  at::manual_seed(seed);
  for (const auto& p : params) {
    if (p.name.ends_with("lora_B.weight")) p.tensor.normal_(0.0, 0.1);
    else if (p.name.ends_with("lora_magnitude_vector")) p.tensor.mul_(1.0 + 0.1 * at::randn_like(p.tensor));
  }
}

}  // namespace llmtune::testing
