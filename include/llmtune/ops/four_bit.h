// Blockwise 4-bit weights (bitsandbytes' NF4/FP4 layout) as raw tensors, and the fast paths over
// them: a tight CPU loop and CUDA kernels for dequantize, a CUDA matrix-vector product for batch-1
// decoding, and a CPU quantize loop. The format and its ATen reference live in quant/bnb.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llmtune::ops {

// One 4-bit weight of `numel` elements, flattened row-major, all tensors on packed's device.
struct FourBitBlocks {
  at::Tensor packed;         // uint8 [(numel + 1) / 2]: element 2m in the high nibble of byte m
  at::Tensor code;           // float32 [16]: the value of each nibble
  at::Tensor absmax;         // float32 [blocks]; uint8 [blocks] when nested_code is defined
  at::Tensor nested_code;    // float32 [256] (double quantization), or undefined
  at::Tensor nested_absmax;  // float32 [ceil(blocks / nested_blocksize)]
  double nested_offset = 0;  // added (as float32) to the nested-dequantized absmax
  int64_t blocksize = 64;
  int64_t nested_blocksize = 256;
  int64_t numel = 0;
};

// Whether four_bit_dequantize_out has a fast path on `device`: CPU always, CUDA when the kernels
// were built. Elsewhere (MPS) the caller uses the ATen reference.
bool four_bit_dequantize_fast(const c10::Device& device);

// out: contiguous, w.numel elements of float32, bfloat16 or float16, on packed's device; filled
// with code[nibble] * absmax[block] in float32, rounded once to out's dtype. Bit-identical to the
// ATen reference (quant::dequantize_4bit_reference).
void four_bit_dequantize_out(const FourBitBlocks& w, at::Tensor& out);

// Whether four_bit_gemv can run for x (CUDA with the kernels built, one row, float dtype).
bool four_bit_gemv_available(const at::Tensor& x);

// y = W x for one token: W (out_features, in_features) stored in w, x (in_features,) contiguous on
// CUDA. Returns (out_features,) in x's dtype; each weight is rounded to x's dtype before the
// product (as dequantize + matmul would), the sum accumulates in float32.
at::Tensor four_bit_gemv(const FourBitBlocks& w, const at::Tensor& x, int64_t out_features);

// The CPU quantizer's inner loop: x (numel,) contiguous float32/bf16/fp16 on the CPU, `mid` the 15
// float32 midpoints of the sorted code and `order` the code index of each sorted position (int64).
// Writes packed (uint8 [(numel + 1) / 2]) and absmax (float32 [blocks]) exactly as the ATen
// reference computes them (reciprocal-multiply for whole blocks, division for a partial last one,
// ties to the lower code, an odd count padded with the code of 0).
void four_bit_quantize_cpu(const at::Tensor& x, const at::Tensor& mid, const at::Tensor& order, int64_t blocksize,
                           at::Tensor& packed, at::Tensor& absmax);

}  // namespace llmtune::ops
