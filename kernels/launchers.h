// Entry points of the CUDA kernels, called by the ops in src/ops/ on CUDA tensors. Declared with
// ATen types only; each is defined in kernels/<op>.cu (or, without CUDA, in kernels/absent.cpp,
// where it throws — ops check cuda_kernels_compiled() before calling).
#pragma once

#include <ATen/core/Tensor.h>

namespace llmtune::kernels {

// x: (..., H) contiguous, weight: (H,), same dtype (fp32, fp16 or bf16), on one CUDA device.
// Returns RMSNorm(x) as ops::rms_norm defines it.
at::Tensor rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset);

}  // namespace llmtune::kernels
