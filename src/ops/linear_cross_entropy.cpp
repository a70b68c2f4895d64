// The chunked linear + cross-entropy as one autograd function. Per chunk of rows c:
//   z = to_dtype(h_c Wᵀ) → fp32, lse = logsumexp(z), loss += Σ (lse − z[target]),
//   dz = softmax(z) − onehot(target) → dtype,  dh_c = dz W,  dW += dzᵀ h_c  (fp32 accumulator)
// so only one chunk's (rows × V) logits exist at a time. Backward multiplies the stored
// gradients by the incoming scalar gradient.
#include "llmtune/ops/linear_cross_entropy.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

namespace llmtune::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, int64_t chunk_rows) {
    const int64_t n = hidden.size(0);
    const bool grad_h = hidden.requires_grad(), grad_w = weight.requires_grad();
    const auto dtype = hidden.scalar_type();
    const at::Tensor w = weight.scalar_type() == dtype ? weight : weight.to(dtype);
    at::Tensor loss = at::zeros({}, hidden.options().dtype(at::kFloat));
    at::Tensor dh = grad_h ? at::empty_like(hidden) : at::Tensor();
    at::Tensor dw = grad_w ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat)) : at::Tensor();
    for (int64_t start = 0; start < n; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, n - start);
      const at::Tensor h = hidden.narrow(0, start, rows);
      const at::Tensor t = targets.narrow(0, start, rows).unsqueeze(1);  // (rows, 1)
      at::Tensor z = at::linear(h, w).to(at::kFloat);                     // (rows, V)
      const at::Tensor lse = at::logsumexp(z, {1}, /*keepdim=*/true);     // (rows, 1)
      loss += (lse - z.gather(1, t)).sum();
      if (!grad_h && !grad_w) continue;
      // z becomes softmax(z) − onehot(target), in place.
      z.sub_(lse).exp_();
      z.scatter_add_(1, t, at::full_like(t, -1, z.options()));
      const at::Tensor dz = z.to(dtype);
      if (grad_h) dh.narrow(0, start, rows).copy_(at::mm(dz, w));
      if (grad_w) dw.add_(at::mm(dz.t(), h).to(at::kFloat));
    }
    ctx->saved_data["dh"] = dh;
    ctx->saved_data["dw"] = dw;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor g = grad_outputs[0];  // 0-dim
    at::Tensor dh = ctx->saved_data["dh"].toTensor();
    at::Tensor dw = ctx->saved_data["dw"].toTensor();
    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    at::Tensor out_h = dh.defined() ? (dh * g.to(dh.scalar_type())) : at::Tensor();
    at::Tensor out_w = dw.defined() ? (dw * g).to(weight_dtype) : at::Tensor();
    return {out_h, out_w, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

int64_t auto_chunk_rows(int64_t vocab) {
  constexpr int64_t kBudgetBytes = int64_t{64} << 20;
  return std::max<int64_t>(32, kBudgetBytes / (4 * std::max<int64_t>(vocab, 1)));
}

at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                    int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "linear_cross_entropy: hidden (N, H) and weight (V, H) disagree: ", hidden.sizes(), " vs ", weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "linear_cross_entropy: targets must be (N,), got ", targets.sizes(), " for N = ", hidden.size(0));
  TORCH_CHECK(targets.device() == hidden.device() && weight.device() == hidden.device(),
              "linear_cross_entropy: hidden, weight and targets must be on one device");
  if (chunk_rows <= 0) chunk_rows = auto_chunk_rows(weight.size(0));
  return LinearCrossEntropy::apply(hidden, weight, targets, chunk_rows);
}

}  // namespace llmtune::ops
