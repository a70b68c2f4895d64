// Linear + cross-entropy over chunks of rows: the LM head and the token loss without a full
// (tokens × vocab) tensor in any dtype beyond one chunk. The gradients of the hidden states and
// of the weight are computed chunk by chunk in the forward pass (logsumexp kept per row) and
// scaled by the incoming gradient in backward, as Liger's fused linear cross-entropy and Apple's
// Cut Cross-Entropy do. The ATen version here is the reference and the CPU/MPS path.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace llmtune::ops {

// Rows per chunk for a vocabulary of `vocab` when the caller asks for "auto" (0): a chunk's fp32
// logits take at most 64 MiB, and at least 32 rows.
int64_t auto_chunk_rows(int64_t vocab);

// hidden: (N, H) any float dtype; weight: (V, H), cast to hidden's dtype for the product (as the
// dense LM head does); targets: (N,) int64 in [0, V). Returns the fp32 sum over rows of
// logsumexp(h·Wᵀ) − (h·Wᵀ)[target], the logits rounded to hidden's dtype before the fp32
// softmax (transformers' order). Differentiable w.r.t. hidden and weight when they require grad.
// chunk_rows <= 0: auto_chunk_rows.
at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                    int64_t chunk_rows = 0);

}  // namespace llmtune::ops
