// The dense linear layer.
#include "llmtune/model/linear.h"

#include <ATen/ops/linear.h>

namespace llmtune::model {

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  TORCH_CHECK(weight_.dim() == 2, "DenseLinear: weight must be 2-D");
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const {
  return bias_.defined() ? at::linear(x, weight_, bias_) : at::linear(x, weight_);
}

}  // namespace llmtune::model
