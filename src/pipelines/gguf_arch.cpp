// Names, permutations and tensor order shared by GGUF export and import (the per-tensor type
// policy is quant/gguf_policy.cpp).
#include "gguf_arch.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "llmtune/util/error.h"

namespace llmtune::pipelines::gguf_detail {
const model::FamilyDesc& gguf_family(const std::string& model_type, const std::string& source) {
  const model::FamilyDesc& f = model::family_for(model_type, source);
  if (f.gguf.arch.empty()) {
    std::string names;
    for (const auto& t : model::supported_model_types())
      if (!model::family_for(t, source).gguf.arch.empty()) names += (names.empty() ? "" : ", ") + t;
    throw ModelLoadError(source + ": model_type '" + model_type + "' cannot be exported to GGUF (supported: " + names + ")");
  }
  return f;
}

namespace {

// Applies `edit(rows, n_head)` to each q or k part of a (possibly fused) projection's rows.
template <typename Edit>
at::Tensor edit_qk_parts(const model::FamilyDesc& f, const model::ModelConfig& c, const std::string& hf_name,
                         const at::Tensor& t, Edit edit) {
  const auto parts = model::projections_of(f, hf_name);
  bool any = false;
  for (auto p : parts) any |= p == model::Proj::Q || p == model::Proj::K;
  if (!any) return t;
  std::vector<at::Tensor> pieces;
  int64_t row = 0;
  for (auto p : parts) {
    const int64_t n = model::proj_out_features(c, p);
    at::Tensor piece = t.narrow(0, row, n);
    row += n;
    if (p == model::Proj::Q) piece = edit(piece, c.n_heads);
    else if (p == model::Proj::K) piece = edit(piece, c.n_heads_kv);
    pieces.push_back(piece);
  }
  return pieces.size() == 1 ? pieces[0] : at::cat(pieces, 0).contiguous();
}

}  // namespace

at::Tensor to_gguf_layout(const model::FamilyDesc& f, const model::ModelConfig& c, const std::string& hf_name,
                          const at::Tensor& t) {
  at::Tensor out = t;
  if (f.gguf.permute_qk) out = edit_qk_parts(f, c, hf_name, out, permute_qk);
  if (f.gguf.norm_plus_one && model::is_norm_weight(f, hf_name)) out = out + 1;
  return out;
}

at::Tensor from_gguf_layout(const model::FamilyDesc& f, const model::ModelConfig& c, const std::string& hf_name,
                            const at::Tensor& t) {
  at::Tensor out = t;
  if (f.gguf.permute_qk) out = edit_qk_parts(f, c, hf_name, out, unpermute_qk);
  if (f.gguf.norm_plus_one && model::is_norm_weight(f, hf_name)) out = out - 1;
  return out;
}

bool is_conv1d_weight(const model::FamilyDesc& f, const std::string& hf_name) {
  return f.conv1d && hf_name.ends_with(".weight") && !model::projections_of(f, hf_name).empty();
}

std::vector<std::pair<std::string, at::Tensor>> generated_tensors(const model::FamilyDesc& f, const model::ModelConfig& c) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  if (c.rope.type == "llama3") out.emplace_back("rope_freqs.weight", llama3_rope_factors(c.rope, c.head_dim));
  // Phi-3's converter writes the longrope divisors as they are (Phi3MiniModel.generate_extra_tensors).
  if (f.gguf.keys == model::GgufKeys::Phi3 && c.rope.type == "longrope" && !c.rope.long_factor.empty()) {
    auto as_tensor = [](const std::vector<double>& v) {
      std::vector<float> x(v.begin(), v.end());
      return at::tensor(x, at::kFloat);
    };
    out.emplace_back("rope_factors_long.weight", as_tensor(c.rope.long_factor));
    out.emplace_back("rope_factors_short.weight", as_tensor(c.rope.short_factor));
  }
  return out;
}

at::Tensor permute_qk(const at::Tensor& t, int64_t n_head) {
  std::vector<int64_t> view{n_head, 2, t.size(0) / n_head / 2};
  for (int64_t d = 1; d < t.dim(); ++d) view.push_back(t.size(d));
  return t.reshape(view).transpose(1, 2).reshape(t.sizes()).contiguous();
}

at::Tensor unpermute_qk(const at::Tensor& t, int64_t n_head) {
  std::vector<int64_t> view{n_head, t.size(0) / n_head / 2, 2};
  for (int64_t d = 1; d < t.dim(); ++d) view.push_back(t.size(d));
  return t.reshape(view).transpose(1, 2).reshape(t.sizes()).contiguous();
}

at::Tensor llama3_rope_factors(const model::RopeConfig& rope, int64_t head_dim) {
  // The converter's arithmetic, in float32 like its torch scalars: 1 for short wavelengths,
  // factor for long ones, 1/((1-s)/factor + s) between.
  at::Tensor exponents = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
  at::Tensor freqs = at::pow(rope.theta, exponents).reciprocal();
  const double old_len = static_cast<double>(rope.original_max_position_embeddings);
  const double low_wavelen = old_len / rope.low_freq_factor;
  const double high_wavelen = old_len / rope.high_freq_factor;
  at::Tensor wavelen = freqs.reciprocal() * (2 * M_PI);
  at::Tensor smooth = (wavelen.reciprocal() * old_len - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor mid = ((1 - smooth) / rope.factor + smooth).reciprocal();
  at::Tensor out = at::where(wavelen > low_wavelen, at::full_like(mid, rope.factor), mid);
  return at::where(wavelen < high_wavelen, at::full_like(mid, 1.0), out).contiguous();
}

int64_t block_of(const std::string& gguf_name) {
  int layer = -1;
  if (std::sscanf(gguf_name.c_str(), "blk.%d.", &layer) != 1) return -1;
  return layer;
}

bool gguf_name_less(const std::string& a, const std::string& b) {
  const int64_t la = block_of(a), lb = block_of(b);
  if (la != lb) return la < lb;
  return a < b;
}

}  // namespace llmtune::pipelines::gguf_detail
