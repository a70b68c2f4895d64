// Linear layers as an interface: dense now; NF4/INT8 bases and LoRA wrappers implement the same
// forward, so blocks never know which one they hold.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

namespace llmtune::model {

class Linear {
 public:
  virtual ~Linear() = default;
  // x: (..., in_features) → (..., out_features)
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
};

class DenseLinear : public Linear {
 public:
  DenseLinear(at::Tensor weight, at::Tensor bias = {});  // weight: (out, in), bias: (out,) or undefined
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }

 private:
  at::Tensor weight_, bias_;
};

using LinearPtr = std::shared_ptr<Linear>;

}  // namespace llmtune::model
