// Linear layers as an interface: dense now; NF4/INT8 bases and LoRA wrappers implement the same
// forward, so blocks never know which one they hold. Weights may be kept in fp32 (trainable
// master copies) while activations run in bf16: forward casts them to x's dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace llmtune::model {

class Linear {
 public:
  virtual ~Linear() = default;
  // x: (..., in_features) → (..., out_features)
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // Every tensor the forward reads (weights, biases, adapter tensors): gradient checkpointing
  // passes them to autograd so recomputed blocks can return their gradients.
  virtual std::vector<at::Tensor> tensors() const = 0;
};

class DenseLinear : public Linear {
 public:
  DenseLinear(at::Tensor weight, at::Tensor bias = {});  // weight: (out, in), bias: (out,) or undefined
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  std::vector<at::Tensor> tensors() const override;
  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }
  // Full fine-tuning replaces the tensors with trainable copies.
  at::Tensor& mutable_weight() { return weight_; }
  at::Tensor& mutable_bias() { return bias_; }

 private:
  at::Tensor weight_, bias_;
};

using LinearPtr = std::shared_ptr<Linear>;

}  // namespace llmtune::model
