// The causal-LM training loss as transformers' ForCausalLMLoss computes it: logits at position t
// predict labels[t + 1]; positions labelled -100 are ignored; cross-entropy in fp32.
#pragma once

#include <ATen/core/Tensor.h>

namespace llmtune::train {

// logits: (B, T, V) any float dtype; labels: (B, T) int64, unshifted, -100 where not trained.
// Returns the fp32 sum of token cross-entropies over the trained targets (a 0-dim tensor).
at::Tensor causal_lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels);

// Number of trained targets in `labels`: count of labels[:, 1:] != -100.
int64_t count_targets(const at::Tensor& labels);

// The mean over trained targets (transformers' loss when num_items_in_batch is not given).
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels);

}  // namespace llmtune::train
