// Attention dispatch. Packed rows on CPU (and fp32 CUDA, and sliding windows) run SDPA over
// windows of whole sequences (plan_packed), so no (T, T) mask is built; on CUDA in bf16/fp16 the
// whole batch is one variable-length flash call over the flattened tokens (cu_seqlens), as
// flash-attention 2's varlen interface does.
#include "attention.h"

#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>

#include "llmtune/util/error.h"

namespace llmtune::model {
namespace {

// (1, 1, T, S) bool mask: query i (at position past + i) sees key j when j <= past + i and, with a
// sliding window W, j > past + i - W.
at::Tensor causal_mask(int64_t t, int64_t past, int64_t window, c10::Device device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q = at::arange(past, past + t, opts).unsqueeze(1);
  at::Tensor k = at::arange(0, past + t, opts).unsqueeze(0);
  at::Tensor allowed = k <= q;
  if (window > 0) allowed = allowed.logical_and(k > q - window);
  return allowed.unsqueeze(0).unsqueeze(0);
}

// SDPA, or with a soft-cap the eager form transformers' Gemma 2 runs: scores in the activation
// dtype, capped, masked, softmax in fp32. mask: bool (.., T, S) or undefined; causal: the plain
// lower-triangular mask when no mask is given.
at::Tensor sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, bool causal,
                double scale, double softcap) {
  const bool gqa = q.size(1) != k.size(1);
  if (softcap <= 0) {
    if (mask.defined()) return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale, gqa);
    return at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, causal, scale, gqa);
  }
  const int64_t groups = q.size(1) / k.size(1);
  const at::Tensor kk = groups > 1 ? k.repeat_interleave(groups, 1) : k;
  const at::Tensor vv = groups > 1 ? v.repeat_interleave(groups, 1) : v;
  at::Tensor scores = at::matmul(q, kk.transpose(-2, -1)) * scale;
  scores = at::tanh(scores / softcap) * softcap;
  at::Tensor allowed = mask.defined() ? mask : causal ? causal_mask(q.size(2), k.size(2) - q.size(2), 0, q.device()) : at::Tensor();
  if (allowed.defined()) scores = scores.masked_fill(allowed.logical_not(), -std::numeric_limits<double>::infinity());
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  return at::matmul(probs, vv);
}

// One causal sequence (no cache): q (B', H_q, L, D) against its own k, v.
at::Tensor causal_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t window, double scale,
                       double softcap) {
  const int64_t len = q.size(2);
  if (window > 0 && window < len) return sdpa(q, k, v, causal_mask(len, 0, window, q.device()), false, scale, softcap);
  return sdpa(q, k, v, at::Tensor(), /*causal=*/len > 1, scale, softcap);
}

// (1, 1, L, L) bool: block-diagonal causal over runs of the given lengths (summing to L).
at::Tensor block_causal_mask(const std::vector<int64_t>& runs, int64_t len) {
  at::Tensor mask = at::zeros({len, len}, at::kBool);
  bool* m = mask.data_ptr<bool>();
  int64_t t = 0;
  for (int64_t run : runs) {
    for (int64_t k = 0; k < run; ++k) std::fill(m + (t + k) * len + t, m + (t + k) * len + t + k + 1, true);
    t += run;
  }
  return mask.view({1, 1, len, len});
}

// Per row, the runs that attend within themselves: its sequences, then the padding after them.
std::vector<int64_t> runs_of(const std::vector<int64_t>& lengths, int64_t tokens) {
  std::vector<int64_t> runs;
  int64_t used = 0;
  for (int64_t len : lengths) {
    runs.push_back(len);
    used += len;
  }
  if (used < tokens) runs.push_back(tokens - used);
  return runs;
}

// Tokens per attention window on the per-window path: measured on 2 CPU cores (hidden 576, 9/3
// heads, T 2048): one SDPA call per 64-token sequence is ~3x slower than a (T, T) mask, one per
// 256-token sequence ~1.6x faster; windows of whole sequences of about this size take the better of both.
constexpr int64_t kWindowTokens = 256;

}  // namespace

PackedPlan plan_packed(const PackedSegments& segments, int64_t batch, int64_t tokens, c10::Device device,
                       at::ScalarType dtype, int64_t window, bool softcap) {
  if (static_cast<int64_t>(segments.lengths.size()) != batch)
    throw DataError("packed batch: " + std::to_string(segments.lengths.size()) + " rows of sequence lengths for " +
                    std::to_string(batch) + " rows of tokens");
  std::vector<std::vector<int64_t>> row_runs;
  for (const auto& row : segments.lengths) {
    int64_t used = 0;
    for (int64_t len : row) {
      if (len <= 0) throw DataError("packed batch: a sequence of length " + std::to_string(len));
      used += len;
    }
    if (used > tokens)
      throw DataError("packed batch: a row's sequences hold " + std::to_string(used) + " tokens, the row " + std::to_string(tokens));
    row_runs.push_back(runs_of(row, tokens));
  }
  PackedPlan plan;
  plan.flash = device.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && window == 0 && !softcap;
  if (plan.flash) {
    // cu_seqlens over the flattened tokens, built on the host and copied once per forward from
    // pinned memory without waiting.
    std::vector<int32_t> cu{0};
    for (const auto& runs : row_runs) {
      for (int64_t run : runs) {
        cu.push_back(cu.back() + static_cast<int32_t>(run));
        plan.max_len = std::max(plan.max_len, run);
      }
    }
    at::Tensor host = at::empty({static_cast<int64_t>(cu.size())}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    std::copy(cu.begin(), cu.end(), host.data_ptr<int32_t>());
    plan.cu_seqlens = host.to(device, /*non_blocking=*/true);
    return plan;
  }
  for (int64_t r = 0; r < batch; ++r) {
    const std::vector<int64_t>& runs = row_runs[r];
    size_t i = 0;
    int64_t start = 0;
    while (i < runs.size()) {
      std::vector<int64_t> group{runs[i++]};
      int64_t len = group[0];
      while (i < runs.size() && len + runs[i] <= kWindowTokens) {
        len += runs[i];
        group.push_back(runs[i++]);
      }
      PackedPlan::Window w{r, start, len, {}};
      if (group.size() > 1) {
        w.mask = block_causal_mask(group, len);
        if (!device.is_cpu()) w.mask = w.mask.to(device);
      }
      plan.windows.push_back(std::move(w));
      start += len;
    }
  }
  return plan;
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t past, int64_t window,
                  const at::Tensor& mask, const PackedPlan* packed, double scale, double softcap) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  if (packed && packed->flash) {
    // (B, H, T, D) → (B·T, H, D), the varlen kernels' layout.
    auto flat = [&](const at::Tensor& x) { return x.transpose(1, 2).reshape({b * t, x.size(1), d}); };
    auto out = at::_flash_attention_forward(flat(q), flat(k), flat(v), packed->cu_seqlens, packed->cu_seqlens,
                                            packed->max_len, packed->max_len, 0.0, /*is_causal=*/true,
                                            /*return_debug_mask=*/false, scale);
    return std::get<0>(out).view({b, t, h, d}).transpose(1, 2);
  }
  if (packed) {
    std::vector<std::vector<at::Tensor>> rows(b);
    for (const auto& w : packed->windows) {
      auto part = [&](const at::Tensor& x) { return x.narrow(0, w.row, 1).narrow(2, w.start, w.len); };
      if (!w.mask.defined()) {
        rows[w.row].push_back(causal_sdpa(part(q), part(k), part(v), window, scale, softcap));
        continue;
      }
      at::Tensor mask = w.mask;
      if (window > 0 && window < w.len) mask = mask.logical_and(causal_mask(w.len, 0, window, q.device()));
      rows[w.row].push_back(sdpa(part(q), part(k), part(v), mask, false, scale, softcap));
    }
    std::vector<at::Tensor> out;
    for (auto& pieces : rows) out.push_back(pieces.size() == 1 ? pieces[0] : at::cat(pieces, 2));
    return out.size() == 1 ? out[0] : at::cat(out, 0);
  }
  const int64_t s = k.size(2);
  if (mask.defined()) return sdpa(q, k, v, mask, false, scale, softcap);
  if (past == 0 && (window == 0 || window >= s)) return sdpa(q, k, v, at::Tensor(), t > 1, scale, softcap);
  if (t > 1 || (window > 0 && window < s)) return sdpa(q, k, v, causal_mask(t, past, window, q.device()), false, scale, softcap);
  return sdpa(q, k, v, at::Tensor(), false, scale, softcap);
}

}  // namespace llmtune::model
