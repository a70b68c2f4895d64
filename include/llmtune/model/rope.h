// Rotary position embeddings as transformers computes them (FORMATS.md §2.3): inverse
// frequencies in fp32 for every rope type transformers' ROPE_INIT_FUNCTIONS has (default, linear,
// llama3, dynamic, yarn, longrope), the attention scaling yarn and longrope apply to cos/sin,
// cos/sin tables, the rotate_half form, and partial rotary (only the first rotary_dim dims rotate).
#pragma once

#include <ATen/core/Tensor.h>

#include "llmtune/model/config.h"

namespace llmtune::model {

// The tables one forward uses.
struct RopeTables {
  at::Tensor inv_freq;             // (rotary_dim/2,) float32
  double attention_scaling = 1.0;  // cos and sin are multiplied by it (yarn, longrope)
};

// The dims that rotate: head_dim · partial_rotary_factor (Phi-4-mini 0.75), even.
int64_t rotary_dim(const RopeConfig& rope, int64_t head_dim);

// Whether the tables depend on the forward's length (dynamic NTK, longrope): then the caller asks
// for them per forward with seq_len = largest position + 1.
bool rope_depends_on_length(const RopeConfig& rope);

// The tables for a forward whose largest position is seq_len - 1 (ignored unless
// rope_depends_on_length), on the CPU. max_position_embeddings: config.json's.
RopeTables rope_tables(const RopeConfig& rope, int64_t head_dim, int64_t max_position_embeddings, int64_t seq_len);

// (rotary_dim/2,) float32 on the CPU: rope_tables' inv_freq at seq_len 0.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// positions: (B, T) int64. Returns cos, sin: (B, T, rotary_dim) in `dtype` on positions' device,
// each multiplied by attention_scaling (in fp32, before the cast, as transformers does).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions,
                                               at::ScalarType dtype, double attention_scaling = 1.0);

// x: (B, H, T, D); cos/sin: (B, T, R), R <= D. Returns the first R dims as x*cos + rotate_half(x)*sin
// and the other D - R unchanged.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace llmtune::model
