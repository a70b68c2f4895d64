// RoPE. The operations and their order mirror transformers' (modeling_rope_utils.py and the
// models' RotaryEmbedding.forward) so fp32 results agree to the bit on the CPU.
#include "llmtune/model/rope.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/cos.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/reciprocal.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/sin.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>

#include <algorithm>
#include <cmath>

namespace llmtune::model {
namespace {

// transformers' `dim = int(head_dim * partial_rotary_factor)`: the exponents' divisor. The tables
// have ceil(dim/2) frequencies, so an odd dim rotates dim + 1 dims, as transformers does.
int64_t exponent_dim(const RopeConfig& rope, int64_t head_dim) {
  return static_cast<int64_t>(static_cast<double>(head_dim) * rope.partial_rotary_factor);
}

// arange(0, dim, 2) (int64, then float) / dim: the exponents 2i/dim, float32.
at::Tensor exponents(int64_t dim) {
  return at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
}

// Python's `1.0 / t`, which torch evaluates as t.reciprocal() * 1.0.
at::Tensor one_over(const at::Tensor& t) { return t.reciprocal() * 1.0; }

// 1 / base^(2i/dim) with a scalar base (cast to float32 by pow, as `float ** tensor` does).
at::Tensor plain_inv_freq(double base, int64_t dim) { return one_over(at::pow(base, exponents(dim))); }

// Llama 3.1: long wavelengths divided by factor, short ones kept, a smooth blend between.
at::Tensor llama3_inv_freq(const RopeConfig& rope, int64_t dim) {
  at::Tensor inv_freq = plain_inv_freq(rope.theta, dim);
  const double old_len = static_cast<double>(rope.original_max_position_embeddings);
  const double low_wavelen = old_len / rope.low_freq_factor;
  const double high_wavelen = old_len / rope.high_freq_factor;
  at::Tensor wavelen = inv_freq.reciprocal() * (2 * M_PI);
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq);
  at::Tensor smooth = (wavelen.reciprocal() * old_len - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled;
  at::Tensor medium = (wavelen < high_wavelen).logical_not() * (wavelen > low_wavelen).logical_not();
  return at::where(medium, smoothed, scaled);
}

// Dynamic NTK: the base grows with the length once it passes max_position_embeddings,
// theta · (factor·len/max - (factor-1))^(dim/(dim-2)).
//
// transformers keeps state (max_seq_len_cached): it recomputes the tables when a forward's length
// passes the longest seen so far, and returns to the original ones only below max_position_embeddings.
// We compute them afresh per forward from that forward's length, which is the same for single
// forwards and for generation whose length only grows; after a long forward, transformers keeps the
// long tables for a shorter one that is still past max_position_embeddings, we do not.
// Up to max_position_embeddings transformers uses the tables from __init__ (Python floats); past it
// dynamic_rope_update passes the length as an int64 tensor, so the base is computed in float32.
at::Tensor dynamic_inv_freq(const RopeConfig& rope, int64_t dim, int64_t max_position_embeddings, int64_t seq_len) {
  TORCH_CHECK(dim > 2, "dynamic rope needs a rotary dimension above 2, got ", dim);
  const double exponent = static_cast<double>(dim) / static_cast<double>(dim - 2);
  const double max_len = static_cast<double>(max_position_embeddings);
  if (seq_len <= max_position_embeddings) {
    const double base = rope.theta * std::pow(rope.factor * max_len / max_len - (rope.factor - 1), exponent);
    return plain_inv_freq(base, dim);
  }
  at::Tensor len = at::scalar_tensor(seq_len, at::kLong);
  at::Tensor base = (len * rope.factor / max_position_embeddings - (rope.factor - 1)).pow(exponent) * rope.theta;
  return one_over(at::pow(base, exponents(dim)));
}

// transformers' get_mscale: the YaRN attention temperature for a context multiplier.
double yarn_mscale(double scale, double mscale = 1.0) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// YaRN (arXiv 2309.00071): frequencies that rotate fewer than beta_slow times over the original
// context are interpolated (divided by factor), those above beta_fast kept, a linear ramp between.
RopeTables yarn_tables(const RopeConfig& rope, int64_t dim) {
  RopeTables t;
  if (rope.attention_factor) t.attention_scaling = *rope.attention_factor;
  else if (rope.mscale != 0 && rope.mscale_all_dim != 0)
    t.attention_scaling = yarn_mscale(rope.factor, rope.mscale) / yarn_mscale(rope.factor, rope.mscale_all_dim);
  else t.attention_scaling = yarn_mscale(rope.factor);

  // The dimension at which a frequency turns `rotations` times over the original context.
  const double orig = static_cast<double>(rope.original_max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(orig / (rotations * 2 * M_PI))) / (2 * std::log(rope.theta));
  };
  double low = correction_dim(rope.beta_fast), high = correction_dim(rope.beta_slow);
  if (rope.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp

  at::Tensor pos_freqs = at::pow(rope.theta, exponents(dim));
  at::Tensor extrapolation = one_over(pos_freqs);
  at::Tensor interpolation = one_over(pos_freqs * rope.factor);
  at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  at::Tensor extrapolation_weight = at::rsub(ramp, 1);
  t.inv_freq = interpolation * at::rsub(extrapolation_weight, 1) + extrapolation * extrapolation_weight;
  return t;
}

// LongRoPE (Phi-3): per-frequency divisors, the long set past the original context.
RopeTables longrope_tables(const RopeConfig& rope, int64_t dim, int64_t seq_len) {
  RopeTables t;
  const double orig = static_cast<double>(rope.original_max_position_embeddings);
  if (rope.attention_factor) t.attention_scaling = *rope.attention_factor;
  else t.attention_scaling = rope.factor <= 1.0 ? 1.0 : std::sqrt(1 + std::log(rope.factor) / std::log(orig));
  const auto& factors = seq_len > rope.original_max_position_embeddings ? rope.long_factor : rope.short_factor;
  TORCH_CHECK(static_cast<int64_t>(factors.size()) == (dim + 1) / 2, "longrope: ", factors.size(),
              " factors for a rotary dimension of ", dim);
  at::Tensor ext_factors = at::tensor(factors, at::kDouble).to(at::kFloat);
  t.inv_freq = one_over(ext_factors * at::pow(rope.theta, exponents(dim)));
  return t;
}

}  // namespace

int64_t rotary_dim(const RopeConfig& rope, int64_t head_dim) {
  return (exponent_dim(rope, head_dim) + 1) / 2 * 2;
}

bool rope_depends_on_length(const RopeConfig& rope) {
  return rope.freq_factors.empty() && (rope.type == "dynamic" || rope.type == "longrope");
}

RopeTables rope_tables(const RopeConfig& rope, int64_t head_dim, int64_t max_position_embeddings, int64_t seq_len) {
  const int64_t dim = exponent_dim(rope, head_dim);
  TORCH_CHECK(dim >= 1 && rotary_dim(rope, head_dim) <= head_dim, "rope: partial_rotary_factor ",
              rope.partial_rotary_factor, " gives no rotary dimension within head_dim ", head_dim);
  RopeTables t;
  if (!rope.freq_factors.empty()) {
    TORCH_CHECK(static_cast<int64_t>(rope.freq_factors.size()) == (dim + 1) / 2, "rope freq_factors: ",
                rope.freq_factors.size(), " values for a rotary dimension of ", dim);
    t.inv_freq = plain_inv_freq(rope.theta, dim) / at::tensor(rope.freq_factors, at::kFloat);
    if (rope.type == "linear") t.inv_freq = t.inv_freq / rope.factor;
    return t;
  }
  if (rope.type == "default") t.inv_freq = plain_inv_freq(rope.theta, dim);
  else if (rope.type == "linear") t.inv_freq = plain_inv_freq(rope.theta, dim) / rope.factor;
  else if (rope.type == "llama3") t.inv_freq = llama3_inv_freq(rope, dim);
  else if (rope.type == "dynamic") t.inv_freq = dynamic_inv_freq(rope, dim, max_position_embeddings, seq_len);
  else if (rope.type == "yarn") t = yarn_tables(rope, dim);
  else if (rope.type == "longrope") t = longrope_tables(rope, dim, seq_len);
  else TORCH_CHECK(false, "rope type '", rope.type, "' is not supported");
  return t;
}

at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim) {
  // Dynamic below its max_position_embeddings has theta·(factor·max/max - (factor-1))^(…), theta up
  // to double rounding that float32 absorbs, whatever max is: 1 serves.
  return rope_tables(rope, head_dim, 1, 0).inv_freq;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& positions,
                                               at::ScalarType dtype, double attention_scaling) {
  at::Tensor freqs = positions.to(at::kFloat).unsqueeze(-1) * inv_freq.to(positions.device());  // (B, T, R/2)
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (attention_scaling != 1.0) {  // transformers multiplies by 1.0 too, which changes nothing
    cos = cos * attention_scaling;
    sin = sin * attention_scaling;
  }
  return {cos.to(dtype), sin.to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  // x: (B, H, T, D); cos, sin: (B, T, R).
  const int64_t rotary = cos.size(-1), half = rotary / 2;
  TORCH_CHECK(rotary <= x.size(-1) && rotary % 2 == 0, "apply_rope: ", rotary, " rotary dims for head_dim ", x.size(-1));
  at::Tensor x_rot = rotary == x.size(-1) ? x : x.narrow(-1, 0, rotary);
  at::Tensor rotated = at::cat({-x_rot.narrow(-1, half, half), x_rot.narrow(-1, 0, half)}, -1);
  at::Tensor out = x_rot * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
  if (rotary == x.size(-1)) return out;
  return at::cat({out, x.narrow(-1, rotary, x.size(-1) - rotary)}, -1);
}

}  // namespace llmtune::model
