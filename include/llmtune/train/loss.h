// The causal-LM training loss as transformers' ForCausalLMLoss computes it: logits at position t
// predict labels[t + 1]; positions labelled -100 are ignored; cross-entropy in fp32.
#pragma once

#include <ATen/core/Tensor.h>

#include "llmtune/data/batcher.h"
#include "llmtune/model/causal_lm.h"

namespace llmtune::train {

// logits: (B, T, V) any float dtype; labels: (B, T) int64, unshifted, -100 where not trained.
// Returns the fp32 sum of token cross-entropies over the trained targets (a 0-dim tensor).
at::Tensor causal_lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels);

// Number of trained targets in `labels`: count of labels[:, 1:] != -100.
int64_t count_targets(const at::Tensor& labels);

// The same sum straight from the final hidden states, never holding the full logits: the trained
// positions are gathered first (target_index into the flattened (B·T) positions, target_ids the
// tokens they predict; data::Batch carries both), then the LM head and the cross-entropy run over
// chunks of them (ops/linear_cross_entropy; chunk_rows 0 = auto). An LM head that is not a plain
// dense weight (an adapter on lm_head) takes the unchunked path on the gathered rows.
// hidden: (B, T, H) from CausalLM::forward_hidden.
at::Tensor lm_loss_sum(const model::CausalLM& model, const at::Tensor& hidden, const at::Tensor& target_index,
                       const at::Tensor& target_ids, int64_t chunk_rows = 0);
// target_index / target_ids from unshifted labels (B, T) (one host sync).
std::pair<at::Tensor, at::Tensor> trained_targets(const at::Tensor& labels);

// One batch's summed loss (the batch on the model's device, data::to_device): forward with its
// positions and packed sequences, then lm_loss_sum over its targets. chunk_rows < 0: the
// reference path through the full logits (causal_lm_loss_sum), for comparisons.
at::Tensor batch_loss_sum(const model::CausalLM& model, const data::Batch& batch, int64_t chunk_rows = 0);

// A 0-dim sum of batch losses on `device` (fp64, fp32 on MPS, which has no fp64): summed there and
// read once, so a loop over batches does not sync the host per batch.
at::Tensor loss_accumulator(const c10::Device& device);

// The mean over trained targets (transformers' loss when num_items_in_batch is not given).
at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels);

}  // namespace llmtune::train
