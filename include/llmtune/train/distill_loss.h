// Knowledge-distillation losses: a divergence between the teacher's and the student's next-token
// distributions at a temperature T (scaled by T², as Hinton et al. do, so that the gradient's size
// does not change with T), plus the task cross-entropy on the labels:
//   total = kd_ratio · soft + (1 − kd_ratio) · CE.
// Everything in fp32, summed over the trained positions (label ≠ −100) only; the caller divides by
// the trained tokens of the whole optimizer step, so gradient accumulation and padding do not
// change the loss.
//   forward_kl: KL(p_T ‖ q_S) = Σ p (log p − log q)
//   reverse_kl: KL(q_S ‖ p_T)
//   jsd:        β·KL(p ‖ m) + (1 − β)·KL(q ‖ m), m = β·p + (1 − β)·q (GKD's generalized JSD;
//               β = 0 is forward KL and β = 1 reverse KL, as TRL defines them)
// The teacher is either its full logits or a top-k cache (log-probabilities of the k most likely
// tokens at temperature T, their ids, and the log of the remaining mass): the divergence is then
// taken over k + 1 buckets, the student's mass outside the k ids forming the last.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

namespace llmtune::train {

enum class Divergence { ForwardKL, ReverseKL, JSD };
Divergence divergence_from_name(const std::string& name);  // forward_kl | reverse_kl | jsd

struct DistillLossOptions {
  Divergence divergence = Divergence::ForwardKL;
  double beta = 0.5;         // jsd only
  double temperature = 1.0;  // > 0
  double kd_ratio = 0.5;     // in [0, 1]
  // Vocabulary entries both models share (the first `vocab` logits are compared); 0: all (the
  // student's and the teacher's widths must then be equal).
  int64_t vocab = 0;
};

// The teacher's side for a set of rows: `logits` (rows, V) in any float dtype, or the top-k cache
// (`topk_logprobs` (rows, k) fp32 at the loss's temperature, `topk_ids` (rows, k) int64,
// `rest_logprob` (rows,) fp32, −inf when the k ids hold all the mass).
struct TeacherRows {
  at::Tensor logits;
  at::Tensor topk_logprobs, topk_ids, rest_logprob;
};

// Σ over rows of T²·D(teacher, student) for student_logits (rows, V_s) fp32; differentiable with
// respect to student_logits.
at::Tensor soft_loss_sum(const at::Tensor& student_logits, const TeacherRows& teacher, const DistillLossOptions& options);

struct DistillSums {
  at::Tensor total;  // kd_ratio·soft + (1 − kd_ratio)·ce: the differentiable one
  at::Tensor soft;   // detached (for the log)
  at::Tensor ce;     // detached (for the log)
};

// The teacher's rows [start, start + rows) of the trained positions.
using TeacherChunk = std::function<TeacherRows(int64_t start, int64_t rows)>;

// The student's LM head and both losses over chunks of trained positions, never holding more than
// one chunk's (rows × V) logits: hidden (N, H) the student's final hidden states at the trained
// positions, weight (V, H) its LM head, targets (N,) the labels they predict. As
// ops::linear_cross_entropy_sum, the gradients of hidden and weight are made chunk by chunk in the
// forward pass (the logits rounded to hidden's dtype, then fp32). chunk_rows <= 0: auto.
DistillSums linear_distill_sums(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                const TeacherChunk& teacher, const DistillLossOptions& options, int64_t chunk_rows = 0);

// The same sums from full logits (the reference path, and LM heads that are not a plain dense
// weight): student_logits (N, V_s) differentiable, teacher (N rows).
DistillSums distill_sums(const at::Tensor& student_logits, const TeacherRows& teacher, const at::Tensor& targets,
                         const DistillLossOptions& options);

// From (B, T, V) logits and unshifted (B, T) labels, as a causal LM trains: position t predicts
// labels[t + 1]; only labels ≠ −100 count. For tests and references.
DistillSums causal_distill_sums(const at::Tensor& student_logits, const at::Tensor& teacher_logits,
                                const at::Tensor& labels, const DistillLossOptions& options);

// The top-k cache rows of teacher logits (N, V) at the options' temperature (vocab-truncated):
// what the teacher cache stores. k >= V keeps every token (rest = −inf).
TeacherRows teacher_topk(const at::Tensor& teacher_logits, int64_t k, const DistillLossOptions& options);

}  // namespace llmtune::train
