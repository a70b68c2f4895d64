// Scaled dot-product attention for a decoder layer: the plain causal / sliding-window / KV-cache
// cases through SDPA's fused kernels, an explicit mask when one is given, and packed rows (several
// sequences per row) without a (T, T) mask: variable-length flash attention on CUDA in half
// precision, SDPA over windows of whole sequences elsewhere. Shapes: q (B, H_q, T, D), k/v (B, H_kv, S, D).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "llmtune/model/causal_lm.h"

namespace llmtune::model {

// What every layer of one forward shares about packed rows, prepared once per forward.
struct PackedPlan {
  // Per-window path: each row split at sequence boundaries into windows of about kWindowTokens
  // tokens; a window with one sequence runs causal SDPA, one with several a block-diagonal mask of
  // its own size (O(T·W) mask memory and work instead of O(T²) — and no SDPA call per short sequence).
  struct Window {
    int64_t row = 0, start = 0, len = 0;
    at::Tensor mask;  // (1, 1, len, len) bool on the device; undefined: one sequence, plain causal
  };
  std::vector<Window> windows;
  at::Tensor cu_seqlens;  // (n + 1,) int32 on the device, over the B·T flattened tokens (flash path)
  int64_t max_len = 0;
  bool flash = false;     // use the variable-length flash kernel
};

// Checks the segments against (B, T) and prepares the plan for `device` / `dtype`. `window`: the
// largest sliding window of any layer (the flash path handles none; 0 = none); `softcap`: scores are
// soft-capped (the flash path cannot).
PackedPlan plan_packed(const PackedSegments& segments, int64_t batch, int64_t tokens, c10::Device device,
                       at::ScalarType dtype, int64_t window, bool softcap = false);

// Returns (B, H_q, T, D). `past`: positions already in the cache (0 when none); `window`: this
// layer's sliding window (0 = none); `mask`: (B, 1, T, S) bool or undefined; `packed`: nullptr
// unless the batch is packed; `softcap` > 0: scores become softcap·tanh(scores/softcap) before the
// mask and softmax (Gemma 2), computed without SDPA.
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t past, int64_t window,
                  const at::Tensor& mask, const PackedPlan* packed, double scale, double softcap = 0);

}  // namespace llmtune::model
