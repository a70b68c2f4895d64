// Shifted cross-entropy in fp32, the same operations transformers' ForCausalLMLoss runs, so the
// loss and its gradients agree with the reference to float rounding.
#include "llmtune/train/loss.h"

#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>

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

int64_t count_targets(const at::Tensor& labels) {
  return labels.narrow(1, 1, labels.size(1) - 1).ne(-100).sum().item<int64_t>();
}

at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t n = count_targets(labels);
  if (n == 0) throw DataError("a batch has no trained tokens (every label is -100)");
  return causal_lm_loss_sum(logits, labels) / static_cast<double>(n);
}

}  // namespace llmtune::train
