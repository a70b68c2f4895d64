// Shifted cross-entropy in fp32, the same operations transformers' ForCausalLMLoss runs, so the
// loss and its gradients agree with the reference to float rounding.
#include "llmtune/train/loss.h"

#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include "llmtune/ops/linear_cross_entropy.h"
#include "llmtune/util/error.h"

namespace llmtune::train {

at::Tensor causal_lm_loss_sum(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                  logits.size(1) == labels.size(1),
              "causal_lm_loss: logits (B, T, V) and labels (B, T) disagree: ", logits.sizes(), " vs ", labels.sizes());
  const int64_t v = logits.size(2);
  at::Tensor shift_logits = logits.narrow(1, 0, logits.size(1) - 1).to(at::kFloat).reshape({-1, v});
  at::Tensor shift_labels = labels.narrow(1, 1, labels.size(1) - 1).to(logits.device()).reshape({-1});
  // reduction 1 = mean, 2 = sum (at::Reduction); ignore_index -100, no label smoothing.
  return at::cross_entropy_loss(shift_logits, shift_labels, {}, /*reduction=*/2, /*ignore_index=*/-100, 0.0);
}

std::pair<at::Tensor, at::Tensor> trained_targets(const at::Tensor& labels) {
  const int64_t b = labels.size(0), t = labels.size(1);
  // Position p = row·T + col predicts labels[row, col + 1]; the last column predicts nothing.
  at::Tensor next = at::full({b, t}, -100, labels.options().dtype(at::kLong));
  next.narrow(1, 0, t - 1).copy_(labels.narrow(1, 1, t - 1));
  next = next.reshape({-1});
  at::Tensor index = next.ne(-100).nonzero().squeeze(1);
  return {index, next.index_select(0, index)};
}

at::Tensor lm_loss_sum(const model::CausalLM& model, const at::Tensor& hidden, const at::Tensor& target_index,
                       const at::Tensor& target_ids, int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 3, "lm_loss_sum: hidden must be (B, T, H), got ", hidden.sizes());
  const at::Tensor rows = hidden.reshape({-1, hidden.size(2)}).index_select(0, target_index.to(hidden.device()));
  const at::Tensor targets = target_ids.to(hidden.device());
  if (const at::Tensor* w = model.plain_head_weight()) return ops::linear_cross_entropy_sum(rows, *w, targets, chunk_rows);
  at::Tensor logits = model.logits(rows).to(at::kFloat);
  return at::cross_entropy_loss(logits, targets, {}, /*reduction=*/2, /*ignore_index=*/-100, 0.0);
}

at::Tensor batch_loss_sum(const model::CausalLM& model, const data::Batch& b, int64_t chunk_rows) {
  model::ForwardOptions fo{.positions = b.positions, .attention_mask = b.attention_mask, .packed = b.packed};
  if (chunk_rows < 0) return causal_lm_loss_sum(model.forward(b.input_ids, fo), b.labels);
  return lm_loss_sum(model, model.forward_hidden(b.input_ids, fo), b.target_index, b.target_ids, chunk_rows);
}

at::Tensor loss_accumulator(const c10::Device& device) {
  return at::zeros({}, at::TensorOptions().dtype(device.is_mps() ? at::kFloat : at::kDouble).device(device));
}

int64_t count_targets(const at::Tensor& labels) {
  return labels.narrow(1, 1, labels.size(1) - 1).ne(-100).sum().item<int64_t>();
}

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t n = count_targets(labels);
  if (n == 0) throw DataError("a batch has no trained tokens (every label is -100)");
  return causal_lm_loss_sum(logits, labels) / static_cast<double>(n);
}

}  // namespace llmtune::train
