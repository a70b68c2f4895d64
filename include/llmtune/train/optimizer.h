// AdamW as torch.optim.AdamW computes it (decoupled weight decay, bias-corrected moments), with
// no weight decay on norms and biases, and gradient clipping as clip_grad_norm_. The state is a
// set of named tensors so checkpoints store it in safetensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace llmtune::train {

struct NamedParameter {
  std::string name;
  at::Tensor tensor;  // requires_grad; updated in place
};

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

// Whether a parameter gets weight decay: not norms ("...norm.weight", "norm" in the name) and not
// biases, as transformers' Trainer groups them.
bool decays(const std::string& name);

class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, AdamWOptions options);

  // One update with learning rate `lr` from the current .grad of each parameter (parameters
  // without a gradient are skipped, as torch does).
  void step(double lr);
  void zero_grad();
  int64_t step_count() const { return step_count_; }
  const std::vector<NamedParameter>& params() const { return params_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" for every parameter (zeros before the first step).
  std::vector<std::pair<std::string, at::Tensor>> state() const;
  // Restores moments saved by state(); shapes and names must match (errors name the tensor).
  void load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step_count,
                  const std::string& source);

 private:
  std::vector<NamedParameter> params_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  AdamWOptions options_;
  int64_t step_count_ = 0;
};

// Scales all gradients so their global 2-norm is at most max_norm (when max_norm > 0), as
// torch.nn.utils.clip_grad_norm_; returns the norm before clipping.
double clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm);

}  // namespace llmtune::train
