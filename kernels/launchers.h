// Entry points of the CUDA kernels, called by the ops in src/ops/ on CUDA tensors. Declared with
// ATen types only; each is defined in kernels/<op>.cu (or, without CUDA, in kernels/absent.cpp,
// where it throws — ops check cuda_kernels_compiled() before calling).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llmtune::kernels {

// x: (..., H) contiguous, weight: (H,), same dtype (fp32, fp16 or bf16), on one CUDA device.
// Returns RMSNorm(x) as ops::rms_norm defines it.
at::Tensor rms_norm_forward_cuda(const at::Tensor& x, const at::Tensor& weight, double eps, bool unit_offset);

// A blockwise 4-bit weight (bitsandbytes' layout; ops::FourBitBlocks describes the fields), every
// tensor contiguous on one CUDA device.
struct FourBitArgs {
  at::Tensor packed;         // uint8 [(numel + 1) / 2]
  at::Tensor code;           // float32 [16]
  at::Tensor absmax;         // float32 [blocks], or uint8 [blocks] when nested
  at::Tensor nested_code;    // float32 [256], undefined when not nested
  at::Tensor nested_absmax;  // float32 [ceil(blocks / nested_blocksize)]
  double nested_offset = 0;
  int64_t blocksize = 64;
  int64_t nested_blocksize = 256;
  int64_t numel = 0;
};

// out: numel contiguous fp32/fp16/bf16 values on the same device; code[nibble] * absmax[block]
// rounded once to out's dtype (bit-identical to the ATen reference).
void four_bit_dequantize_cuda(const FourBitArgs& w, at::Tensor& out);

// x: (in_features,) contiguous fp32/fp16/bf16; W: (out_features, in_features), numel = out * in.
// Returns W x, (out_features,) in x's dtype, float32 accumulation.
at::Tensor four_bit_gemv_cuda(const FourBitArgs& w, const at::Tensor& x, int64_t out_features);

}  // namespace llmtune::kernels
