// AdamW: torch.optim.AdamW's single-tensor update written out, so results agree with PyTorch's
// to float rounding and resumed runs continue bit-identically.
#include "llmtune/train/optimizer.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcdiv.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_foreach_sqrt.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <map>

#include "llmtune/util/error.h"

namespace llmtune::train {

bool decays(const std::string& name) {
  if (name.ends_with(".bias") || name.ends_with("_bias")) return false;
  return name.find("norm") == std::string::npos;
}

AdamW::AdamW(std::vector<NamedParameter> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  for (const auto& p : params_) {
    exp_avg_.push_back(at::zeros_like(p.tensor, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p.tensor, at::MemoryFormat::Contiguous));
  }
}

void AdamW::step(double lr) {
  at::NoGradGuard no_grad;
  ++step_count_;
  const auto& o = options_;
  const double bias_correction1 = 1.0 - std::pow(o.beta1, static_cast<double>(step_count_));
  const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(o.beta2, static_cast<double>(step_count_)));
  const double step_size = lr / bias_correction1;
  // torch.optim.AdamW's foreach implementation: a few multi-tensor kernels per step instead of six
  // launches per parameter; the same element-wise operations in the same order as the per-tensor
  // update, so the numbers are identical.
  std::vector<at::Tensor> params, grads, exp_avg, exp_avg_sq, decayed;
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& grad = params_[i].tensor.grad();
    if (!grad.defined()) continue;
    params.push_back(params_[i].tensor);
    grads.push_back(grad);
    exp_avg.push_back(exp_avg_[i]);
    exp_avg_sq.push_back(exp_avg_sq_[i]);
    if (o.weight_decay != 0.0 && decays(params_[i].name)) decayed.push_back(params_[i].tensor);
  }
  if (params.empty()) return;
  if (!decayed.empty()) at::_foreach_mul_(decayed, at::Scalar(1.0 - lr * o.weight_decay));
  at::_foreach_lerp_(exp_avg, grads, at::Scalar(1.0 - o.beta1));
  at::_foreach_mul_(exp_avg_sq, at::Scalar(o.beta2));
  at::_foreach_addcmul_(exp_avg_sq, grads, grads, at::Scalar(1.0 - o.beta2));
  std::vector<at::Tensor> denom = at::_foreach_sqrt(exp_avg_sq);
  at::_foreach_div_(denom, at::Scalar(bias_correction2_sqrt));
  at::_foreach_add_(denom, at::Scalar(o.eps));
  at::_foreach_addcdiv_(params, exp_avg, denom, at::Scalar(-step_size));
}

void AdamW::zero_grad() {
  for (auto& p : params_) p.tensor.mutable_grad() = at::Tensor();  // set_to_none, as torch's default
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + params_[i].name, exp_avg_[i]);
    out.emplace_back("exp_avg_sq." + params_[i].name, exp_avg_sq_[i]);
  }
  return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step_count,
                       const std::string& source) {
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [prefix, dst] : {std::pair{"exp_avg.", &exp_avg_[i]}, {"exp_avg_sq.", &exp_avg_sq_[i]}}) {
      const std::string key = prefix + params_[i].name;
      auto it = by_name.find(key);
      if (it == by_name.end())
        throw CheckpointError(source + ": optimizer state '" + key + "' is missing (was the checkpoint written by another configuration?)");
      if (it->second.sizes() != dst->sizes())
        throw CheckpointError(source + ": optimizer state '" + key + "' has shape " + c10::str(it->second.sizes()) +
                              ", the parameter has " + c10::str(dst->sizes()));
      dst->copy_(it->second);
    }
  }
  if (by_name.size() != 2 * params_.size())
    throw CheckpointError(source + ": the optimizer state has " + std::to_string(by_name.size() / 2) +
                          " parameters, this run trains " + std::to_string(params_.size()) +
                          " (was the checkpoint written by another configuration?)");
  step_count_ = step_count;
}

double clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.tensor.grad().defined()) grads.push_back(p.tensor.grad());
  if (grads.empty()) return 0.0;
  at::Tensor total = at::stack(at::_foreach_norm(grads, 2)).norm(2);
  if (max_norm > 0) at::_foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp_max(1.0));
  return total.item<double>();  // the step's one host sync (the logged gradient norm)
}

}  // namespace llmtune::train
