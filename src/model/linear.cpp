// The dense linear layer.
#include "llmtune/model/linear.h"

#include <ATen/ops/linear.h>

namespace llmtune::model {

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  TORCH_CHECK(weight_.dim() == 2, "DenseLinear: weight must be 2-D");
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const {
  const auto dtype = x.scalar_type();
  at::Tensor w = weight_.scalar_type() == dtype ? weight_ : weight_.to(dtype);
  if (!bias_.defined()) return at::linear(x, w);
  return at::linear(x, w, bias_.scalar_type() == dtype ? bias_ : bias_.to(dtype));
}

std::vector<at::Tensor> DenseLinear::tensors() const {
  if (bias_.defined()) return {weight_, bias_};
  return {weight_};
}

}  // namespace llmtune::model
