// RMSNorm forward: y = x / sqrt(mean(x^2) + eps) * w, computed in fp32 and returned in x's dtype.
// `unit_offset` selects Gemma's (1 + w) scale. Dispatches to the CUDA kernel on CUDA tensors and
// to the ATen reference elsewhere; both follow transformers' rounding order:
//   Llama:  w * to_dtype(x_f32 * rsqrt(mean(x_f32^2) + eps))
//   Gemma:  to_dtype(x_f32 * rsqrt(mean(x_f32^2) + eps) * (1 + w_f32))
#pragma once

#include <ATen/core/Tensor.h>

namespace llmtune::ops {

// x: (..., H), weight: (H,). Returns (..., H) in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset = false);

// The pure-ATen reference: the CPU/MPS path and the oracle for the CUDA kernel.
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset = false);

}  // namespace llmtune::ops
