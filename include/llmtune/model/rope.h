// Rotary position embeddings as transformers computes them (FORMATS.md §2.3): inverse
// frequencies in fp32 (default, linear and llama3 scaling), cos/sin tables, the rotate_half form.
#pragma once

#include <ATen/core/Tensor.h>

#include "llmtune/model/config.h"

namespace llmtune::model {

// (head_dim/2,) float32 on the CPU.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// positions: (B, T) int64. Returns cos, sin: (B, T, head_dim) in `dtype` on positions' device.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions,
                                               at::ScalarType dtype);

// x: (B, H, T, D); cos/sin: (B, T, D). Returns x*cos + rotate_half(x)*sin.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace llmtune::model
