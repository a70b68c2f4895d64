// The dense linear layer and the default linear factory.
#include "llmtune/model/linear.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/linear.h>

namespace llmtune::model {

DenseLinear::DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {
  TORCH_CHECK(weight_.dim() == 2, "DenseLinear: weight must be 2-D");
}

const at::Tensor& DenseLinear::weight_as(at::ScalarType dtype) const {
  if (weight_.scalar_type() == dtype) return weight_;
  const bool grad = at::GradMode::is_enabled();
  const int64_t version = static_cast<int64_t>(weight_._version());
  if (!cast_weight_.defined() || cast_weight_.scalar_type() != dtype || cast_version_ != version || cast_grad_ != grad) {
    cast_weight_ = weight_.to(dtype);
    cast_version_ = version;
    cast_grad_ = grad;
  }
  return cast_weight_;
}

at::Tensor DenseLinear::forward(const at::Tensor& x) const {
  const auto dtype = x.scalar_type();
  const at::Tensor& w = weight_as(dtype);
  if (!bias_.defined()) return at::linear(x, w);
  return at::linear(x, w, bias_.scalar_type() == dtype ? bias_ : bias_.to(dtype));
}

std::vector<at::Tensor> DenseLinear::tensors() const {
  if (bias_.defined()) return {weight_, bias_};
  return {weight_};
}

std::vector<std::pair<std::string, at::Tensor*>> DenseLinear::parameter_slots() {
  std::vector<std::pair<std::string, at::Tensor*>> out{{"weight", &weight_}};
  if (bias_.defined()) out.emplace_back("bias", &bias_);
  return out;
}

LinearPtr make_dense_linear(const LinearRequest& r, const TensorSource& get) {
  at::Tensor w = get(r.path + ".weight", {r.out_features, r.in_features});
  at::Tensor b = r.bias ? get(r.path + ".bias", {r.out_features}) : at::Tensor();
  return std::make_shared<DenseLinear>(std::move(w), std::move(b));
}

}  // namespace llmtune::model
