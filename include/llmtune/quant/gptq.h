// GPTQ (Frantar et al. 2022, IST-DASLab gptq.py) and round-to-nearest with the same group
// quantizer, as pure tensor functions: a layer's weight (O, I) and its calibration Hessian
// H = 2/n·Σ xxᵀ (I, I) in, integer codes, scales and zero points out.
//   quantizer (per output row and group of input columns, min/max): xmin = min(0, min x),
//   xmax = max(0, max x); symmetric: xmax = max(|xmin|, xmax), xmin = −xmax; both 0: −1, +1;
//   scale = (xmax − xmin) / (2^bits − 1); zero = round(−xmin / scale), or 2^(bits−1) when
//   symmetric; q = clamp(round(x / scale) + zero, 0, 2^bits − 1) (round half to even);
//   value = scale·(q − zero).
//   GPTQ: dead columns (H_jj = 0) zeroed; optional act-order (columns by descending H_jj, groups
//   still by original column: "static groups"); H += damp·mean(diag H)·I; the upper Cholesky factor
//   U of H⁻¹; columns quantized left to right in blocks, each error (w − q)/U_jj spread over the
//   block's later columns at once and over later blocks in one product per block.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llmtune::quant {

struct GroupQuantOptions {
  int64_t bits = 4;          // 2, 3, 4 or 8
  int64_t group_size = 128;  // input columns per scale/zero; -1: one group per row
  bool sym = true;
};

struct GptqOptions {
  GroupQuantOptions quant;
  bool act_order = false;
  double damp = 0.01;        // times the mean of the Hessian's diagonal
  int64_t block_size = 128;  // columns per lazy batch update
};

struct GroupQuantized {
  at::Tensor codes;    // (O, I) uint8 in [0, 2^bits − 1], in the weight's column order (a byte a weight: a 1B model's codes are 1.1 GB, not 4.4)
  at::Tensor scales;   // (O, G) fp32, G = ceil(I / group_size) (1 when group_size is -1)
  at::Tensor zeros;    // (O, G) int32
  at::Tensor g_idx;    // (I,) int32: the group of each input column
  double damp_used = 0;  // GPTQ: the dampening that made H positive definite (raised from options.damp when needed)
  at::Tensor dequantized() const;  // (O, I) fp32: scale·(q − zero) per column's group
};

// The min/max parameters of x (O, C) per row: scales (O,), zeros (O,) int32.
std::pair<at::Tensor, at::Tensor> find_group_params(const at::Tensor& x, const GroupQuantOptions& options);

// Round-to-nearest of every group.
GroupQuantized rtn_quantize(const at::Tensor& weight, const GroupQuantOptions& options);

// GPTQ. A Hessian that is not positive definite after dampening is retried with 10× and 100× the
// dampening (logged), then refused with QuantError naming `layer`.
GroupQuantized gptq_quantize(const at::Tensor& weight, const at::Tensor& hessian, const GptqOptions& options,
                             const std::string& layer = "");

}  // namespace llmtune::quant
