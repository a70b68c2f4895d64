// The frozen LLM.int8 linear: bitsandbytes' inference product (int8 activations with outlier
// columns in full precision), its CPU training product (dequantize, multiply), and an autograd
// function whose backward dequantizes again instead of keeping the dense weight.
#include "llmtune/quant/int8_linear.h"

#include <ATen/ops/_int_mm.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/max.h>
#include <ATen/ops/nan_to_num.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/round.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>

#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The weight as bitsandbytes' matmul backward (and its CPU training forward) rebuilds it:
// int8 in `dtype`, times SCB · (1/127) computed in float32.
at::Tensor dequantize_for_matmul(const Int8Tensor& q, at::ScalarType dtype) {
  const at::Tensor scale = q.scb.to(at::kFloat).unsqueeze(1).mul(1.0 / 127.0);
  return (q.weight.to(at::kFloat) * scale).to(dtype);
}

// int8 (M, K) × int8 (N, K)ᵀ → int32 (M, N), exactly (bitsandbytes' int8_linear_matmul).
at::Tensor int8_matmul(const at::Tensor& a, const at::Tensor& b) {
  const bool cuda_ok = a.is_cuda() && a.size(0) > 16 && a.size(1) % 8 == 0 && b.size(0) % 8 == 0;
  if (a.is_cpu() || cuda_ok) return at::_int_mm(a, b.t());
  // Other devices/shapes: float64 products of int8 values are exact far beyond any real width.
  return at::matmul(a.to(at::kDouble), b.to(at::kDouble).t()).to(at::kInt);
}

// y = x Wᵀ (+ b). Forward: LLM.int8 (inference) or dequantize + linear (grad on the CPU, as
// bitsandbytes' MatMul8bitFp); backward: dy W with W dequantized again. `weight` points into the
// layer, which outlives the graph.
struct Int8Matmul : public torch::autograd::Function<Int8Matmul> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t weight, double threshold) {
    const auto* q = reinterpret_cast<const Int8Tensor*>(static_cast<intptr_t>(weight));
    ctx->saved_data["weight"] = weight;
    if (x.is_cpu()) return at::linear(x, dequantize_for_matmul(*q, x.scalar_type()));
    return int8_mixed_matmul(x, *q, {}, threshold);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto* q = reinterpret_cast<const Int8Tensor*>(static_cast<intptr_t>(ctx->saved_data["weight"].toInt()));
    const at::Tensor& g = grad_outputs[0];
    return {at::matmul(g, dequantize_for_matmul(*q, g.scalar_type())), at::Tensor(), at::Tensor()};
  }
};

bool skipped(const std::string& path, const std::vector<std::string>& skip) {
  for (const auto& s : skip)
    if (path == s || (path.size() > s.size() && path.ends_with("." + s))) return true;
  return false;
}

}  // namespace

at::Tensor int8_mixed_matmul(const at::Tensor& x, const Int8Tensor& w, const at::Tensor& bias, double threshold) {
  const int64_t in = x.size(-1), out_features = w.weight.size(0);
  const at::Tensor x2 = x.reshape({-1, in});  // (M, K)
  const int64_t rows = x2.size(0);
  // Activations are quantized through fp16, row-wise; with a threshold, values ≥ it are zeroed
  // before the row absmax, and their whole columns go through the full-precision product.
  at::Tensor a16 = x2.to(at::kHalf);
  at::Tensor outlier_cols;
  if (threshold > 0) {
    const at::Tensor outliers = a16.abs().ge(threshold);
    if (outliers.any().item<bool>()) {
      outlier_cols = at::nonzero(outliers.any(0)).view({-1});
      a16 = a16.masked_fill(outliers, 0);
    }
  }
  const at::Tensor row_absmax = std::get<0>(at::max(a16.abs(), 1)).to(at::kFloat);  // (M,)
  // 127 / absmax as torch computes it (reciprocal, then times 127); an all-zero row gives 0s.
  at::Tensor ca = at::round(a16.to(at::kFloat) * (at::reciprocal(row_absmax) * 127.0).unsqueeze(-1));
  ca = at::nan_to_num(ca, 0.0).to(at::kChar);
  if (rows > 1 && outlier_cols.defined()) ca.index_fill_(1, outlier_cols, 0);
  const at::Tensor scb = w.scb.to(at::kFloat);
  at::Tensor y = int8_matmul(ca, w.weight).to(at::kFloat) * (row_absmax.unsqueeze(1) * scb.unsqueeze(0)) * 6.200124e-05;
  if (bias.defined()) y.add_(bias.to(x.scalar_type()));
  y = y.to(x.scalar_type());
  if (outlier_cols.defined()) {
    const at::Tensor sub_x = x2.index_select(1, outlier_cols);
    const at::Tensor sub_w = (w.weight.index_select(1, outlier_cols) * scb.view({-1, 1}) * 7.874015718698502e-3).to(x.scalar_type());
    y = at::addmm(y, sub_x, sub_w.t());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  return y.view(shape);
}

Int8Linear::Int8Linear(Int8Tensor weight, at::Tensor bias, double threshold)
    : weight_(std::move(weight)), bias_(std::move(bias)), threshold_(threshold) {
  if (weight_.weight.dim() != 2 || weight_.weight.scalar_type() != at::kChar)
    throw QuantError("an int8 linear needs a 2-D int8 weight");
  if (weight_.scb.dim() != 1 || weight_.scb.size(0) != weight_.weight.size(0))
    throw QuantError("an int8 linear needs one SCB value per output row (" + std::to_string(weight_.weight.size(0)) +
                     "), got shape " + c10::str(weight_.scb.sizes()));
}

at::Tensor Int8Linear::forward(const at::Tensor& x) const {
  if (!c10::GradMode::is_enabled()) return int8_mixed_matmul(x, weight_, bias_, threshold_);
  at::Tensor y = Int8Matmul::apply(x, static_cast<int64_t>(reinterpret_cast<intptr_t>(&weight_)), threshold_);
  if (!bias_.defined()) return y;
  return y + (bias_.scalar_type() == y.scalar_type() ? bias_ : bias_.to(y.scalar_type()));
}

std::vector<at::Tensor> Int8Linear::tensors() const {
  std::vector<at::Tensor> out{weight_.weight, weight_.scb};
  if (bias_.defined()) out.push_back(bias_);
  return out;
}

model::LinearFactory int8_linear_factory(std::vector<std::string> skip, double threshold) {
  return [skip = std::move(skip), threshold](const model::LinearRequest& r, const model::TensorSource& get) -> model::LinearPtr {
    if (skipped(r.path, skip)) return model::make_dense_linear(r, get);
    // bitsandbytes' Int8Params quantizes the fp16 copy of the weight.
    Int8Tensor q = quantize_int8(get(r.path + ".weight", {r.out_features, r.in_features}).to(at::kHalf));
    at::Tensor b = r.bias ? get(r.path + ".bias", {r.out_features}) : at::Tensor();
    return std::make_shared<Int8Linear>(std::move(q), std::move(b), threshold);
  };
}

}  // namespace llmtune::quant
