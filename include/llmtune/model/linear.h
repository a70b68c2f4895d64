// Linear layers as an interface: dense now; NF4/INT8/GPTQ bases and adapter wrappers implement the
// same forward, so blocks never know which one they hold. A LinearFactory builds each linear while
// a model is assembled, chosen per module. Weights may be kept in fp32 (trainable master copies)
// while activations run in bf16: forward casts them to x's dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
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
  // The weight as a dense (out, in) tensor (dequantized for quantized kinds; the base's for an
  // adapter wrapper): DoRA's norms, merging and export read it.
  virtual at::Tensor dense_weight() const = 0;
  // (out,) or undefined.
  virtual at::Tensor bias() const { return {}; }
  // The tensors full fine-tuning may replace with trainable copies, by suffix ("weight", "bias").
  // Empty for kinds whose weights cannot be trained in place (quantized bases, adapter wrappers).
  virtual std::vector<std::pair<std::string, at::Tensor*>> parameter_slots() { return {}; }
};

class DenseLinear : public Linear {
 public:
  DenseLinear(at::Tensor weight, at::Tensor bias = {});  // weight: (out, in), bias: (out,) or undefined
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.size(1); }
  int64_t out_features() const override { return weight_.size(0); }
  std::vector<at::Tensor> tensors() const override;
  at::Tensor dense_weight() const override { return weight_; }
  at::Tensor bias() const override { return bias_; }
  std::vector<std::pair<std::string, at::Tensor*>> parameter_slots() override;
  const at::Tensor& weight() const { return weight_; }

 private:
  // The weight in the activations' dtype: full fine-tuning keeps fp32 masters under bf16 compute,
  // and the cast is made once per optimizer step (per weight version and grad mode), not per forward.
  const at::Tensor& weight_as(at::ScalarType dtype) const;

  at::Tensor weight_, bias_;
  mutable at::Tensor cast_weight_;
  mutable int64_t cast_version_ = -1;
  mutable bool cast_grad_ = false;
};

using LinearPtr = std::shared_ptr<Linear>;

// Where assembly gets a tensor: by transformers name and expected PyTorch shape, already on the
// model's device in its dtype (the loader checks the shape and names the file on a mismatch).
using TensorSource = std::function<at::Tensor(const std::string& name, const std::vector<int64_t>& shape)>;
// Asked for as the shape, a source returns the tensor as stored (its own dtype and shape, no
// check, on the CPU): quantized formats read packed bytes and check them against their own
// metadata, then move them to the model's device themselves.
inline const std::vector<int64_t> kStoredTensor{-1};

// One linear to build: its module path ("model.layers.0.self_attn.q_proj", "lm_head"), shape and bias.
struct LinearRequest {
  std::string path;
  int64_t out_features = 0, in_features = 0;
  bool bias = false;
};

// Builds the linear for a module from the tensor source; chosen per module (a quantized kind may
// keep lm_head dense). Reads "<path>.weight" (and ".bias") or whatever tensors its format stores.
using LinearFactory = std::function<LinearPtr(const LinearRequest& request, const TensorSource& get)>;

// The default factory: a DenseLinear of "<path>.weight" (+ "<path>.bias").
LinearPtr make_dense_linear(const LinearRequest& request, const TensorSource& get);

}  // namespace llmtune::model
