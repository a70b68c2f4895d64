// The frozen 4-bit linear: an autograd function whose backward dequantizes again (nothing dense is
// saved), the batch-1 CUDA gemv for decoding, and the factory that quantizes weights while a model
// is read.
#include "llmtune/quant/bnb_linear.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <map>
#include <optional>

#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The dequantized weight for one product, used at once and then dropped. On the CPU it is written
// into a buffer per thread and dtype that every layer reuses (grown to the largest weight): a fresh
// tensor of that size costs fresh pages from the kernel on each call. Only while autograd is not
// recording, so no graph can keep a view of a buffer that the next layer overwrites; on CUDA the
// caching allocator already reuses the memory.
at::Tensor transient_weight(const FourBitTensor& q, at::ScalarType dtype) {
  if (!q.packed.is_cpu() || at::GradMode::is_enabled() || !dequantize_4bit_has_fast_path(q, dtype))
    return dequantize_4bit(q, dtype);
  static thread_local std::map<at::ScalarType, at::Tensor> buffers;
  const int64_t n = q.state.shape[0] * q.state.shape[1];
  at::Tensor& buffer = buffers[dtype];
  if (!buffer.defined() || buffer.numel() < n) {
    buffer = at::Tensor();  // free the old one first
    buffer = at::empty({n}, at::TensorOptions().dtype(dtype));
  }
  at::Tensor w = buffer.narrow(0, 0, n);
  dequantize_4bit_out(q, w);
  return w.view(q.state.shape);
}

// y = x Wᵀ with W dequantized on the fly; dx = dy W, W dequantized again. The packed codes are
// constants: no gradient flows to them. `weight` outlives the graph (the model owns it).
struct FourBitMatmul : public torch::autograd::Function<FourBitMatmul> {
  // `bias` (frozen, in x's dtype) is added in the same product, rounded once, as bitsandbytes'
  // matmul_4bit adds it. An optional, not a Tensor, so that autograd gives it no edge.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t weight,
                            const std::optional<at::Tensor>& bias) {
    const auto* q = reinterpret_cast<const FourBitTensor*>(static_cast<intptr_t>(weight));
    ctx->saved_data["weight"] = weight;
    return at::linear(x, transient_weight(*q, x.scalar_type()), bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto* q = reinterpret_cast<const FourBitTensor*>(static_cast<intptr_t>(ctx->saved_data["weight"].toInt()));
    const at::Tensor& g = grad_outputs[0];
    return {at::matmul(g, transient_weight(*q, g.scalar_type())), at::Tensor(), at::Tensor()};
  }
};

bool skipped(const std::string& path, const std::vector<std::string>& skip) {
  for (const auto& s : skip)
    if (path == s || (path.size() > s.size() && path.ends_with("." + s))) return true;
  return false;
}

}  // namespace

FourBitLinear::FourBitLinear(FourBitTensor weight, at::Tensor bias, at::ScalarType compute_dtype)
    : weight_(std::move(weight)), bias_(std::move(bias)), compute_dtype_(compute_dtype) {
  if (weight_.state.shape.size() != 2) throw QuantError("a 4-bit linear needs a 2-D weight");
  if (compute_dtype_ != at::ScalarType::Undefined && !at::isFloatingType(compute_dtype_))
    throw QuantError("a 4-bit linear's compute dtype must be a floating type");
}

at::Tensor FourBitLinear::forward(const at::Tensor& input) const {
  const bool cast = compute_dtype_ != at::ScalarType::Undefined && input.scalar_type() != compute_dtype_;
  const at::Tensor x = cast ? input.to(compute_dtype_) : input;
  const at::Tensor bias = !bias_.defined() || bias_.scalar_type() == x.scalar_type() ? bias_ : bias_.to(x.scalar_type());
  at::Tensor y;
  const bool recording = at::GradMode::is_enabled() && x.requires_grad();
  if (!recording && x.dim() >= 1 && x.size(-1) == in_features() && x.numel() == in_features() &&
      ops::four_bit_gemv_available(x) && x.device() == weight_.packed.device()) {
    // One token (batch-1 decoding): the CUDA gemv reads the packed codes once, nothing dense.
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out_features();
    y = ops::four_bit_gemv(four_bit_blocks(weight_), x.reshape({-1}), out_features()).view(shape);
    if (bias.defined()) y = y + bias;  // as bitsandbytes' gemv path adds it
  } else {
    y = FourBitMatmul::apply(x, static_cast<int64_t>(reinterpret_cast<intptr_t>(&weight_)),
                             bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
  }
  return cast ? y.to(input.scalar_type()) : y;
}

std::vector<at::Tensor> FourBitLinear::tensors() const {
  std::vector<at::Tensor> out{weight_.packed, weight_.state.absmax};
  if (weight_.state.nested) out.insert(out.end(), {weight_.state.nested_absmax, weight_.state.nested_code});
  if (bias_.defined()) out.push_back(bias_);
  return out;
}

model::LinearFactory four_bit_linear_factory(const FourBitOptions& options) {
  return [options](const model::LinearRequest& r, const model::TensorSource& get) -> model::LinearPtr {
    if (skipped(r.path, options.skip)) return model::make_dense_linear(r, get);
    FourBitTensor q = quantize_4bit(get(r.path + ".weight", {r.out_features, r.in_features}), options.type,
                                    options.blocksize, options.double_quant);
    at::Tensor b = r.bias ? get(r.path + ".bias", {r.out_features}) : at::Tensor();
    return std::make_shared<FourBitLinear>(std::move(q), std::move(b));
  };
}

}  // namespace llmtune::quant
