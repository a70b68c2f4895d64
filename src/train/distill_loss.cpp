// The distillation losses. The divergences run on log-probabilities over the last dimension, with
// 0·log 0 = 0 (a bucket one side gives no mass contributes nothing, and no NaN reaches the
// gradient). The chunked path computes each chunk's gradient with respect to its logits by autograd
// on that chunk alone, then multiplies through the LM head, as ops::linear_cross_entropy_sum does.
#include "llmtune/train/distill_loss.h"

#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>

#include "llmtune/ops/linear_cross_entropy.h"
#include "llmtune/util/error.h"

namespace llmtune::train {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Per bucket exp(la)·(la − lb), with 0 where la = −inf. Both sides are made finite where they are
// masked, so that no inf − inf reaches either the value or the gradient.
at::Tensor kl_terms(const at::Tensor& la, const at::Tensor& lb) {
  const at::Tensor live = la.ne(kNegInf);
  const at::Tensor zero = at::zeros({}, la.options());
  const at::Tensor a = at::where(live, la, zero);
  const at::Tensor b = at::where(live, lb, zero);
  return at::where(live, a.exp() * (a - b), zero);
}

// The divergence summed over rows, from log p (teacher) and log q (student) of the same shape.
// Buckets neither side gives mass (the top-k cache's "rest" when k is the whole vocabulary) are
// set to 0 before anything is computed from them and contribute nothing.
// finite: both sides hold no −inf (full logits): the plain formulas, a third of the passes.
at::Tensor divergence_sum(const at::Tensor& log_p_in, const at::Tensor& log_q_in, const DistillLossOptions& o, bool finite) {
  const bool forward_kl = o.divergence == Divergence::ForwardKL || (o.divergence == Divergence::JSD && o.beta == 0.0);
  const bool reverse_kl = o.divergence == Divergence::ReverseKL || (o.divergence == Divergence::JSD && o.beta == 1.0);
  if (finite) {
    if (forward_kl) return (log_p_in.exp() * (log_p_in - log_q_in)).sum();
    if (reverse_kl) return (log_q_in.exp() * (log_q_in - log_p_in)).sum();
    const at::Tensor log_m = at::logsumexp(at::stack({log_q_in + std::log1p(-o.beta), log_p_in + std::log(o.beta)}), {0});
    return (o.beta * (log_p_in.exp() * (log_p_in - log_m)) + (1.0 - o.beta) * (log_q_in.exp() * (log_q_in - log_m))).sum();
  }
  const at::Tensor dead = log_p_in.eq(kNegInf).logical_and(log_q_in.eq(kNegInf));
  const at::Tensor zero = at::zeros({}, log_q_in.options());
  const at::Tensor log_p = at::where(dead, zero, log_p_in), log_q = at::where(dead, zero, log_q_in);
  at::Tensor terms;
  if (forward_kl) {
    terms = kl_terms(log_p, log_q);
  } else if (reverse_kl) {
    terms = kl_terms(log_q, log_p);
  } else {
    // log m = logsumexp(log q + log(1 − β), log p + log β)
    const at::Tensor log_m = at::logsumexp(at::stack({log_q + std::log1p(-o.beta), log_p + std::log(o.beta)}), {0});
    terms = o.beta * kl_terms(log_p, log_m) + (1.0 - o.beta) * kl_terms(log_q, log_m);
  }
  return at::where(dead, zero, terms).sum();
}

at::Tensor narrow_vocab(const at::Tensor& logits, int64_t vocab) {
  return vocab > 0 && logits.size(-1) > vocab ? logits.narrow(-1, 0, vocab) : logits;
}

}  // namespace

Divergence divergence_from_name(const std::string& name) {
  if (name == "forward_kl") return Divergence::ForwardKL;
  if (name == "reverse_kl") return Divergence::ReverseKL;
  if (name == "jsd") return Divergence::JSD;
  throw ConfigError("distill.loss: '" + name + "' is not one of forward_kl, reverse_kl, jsd");
}

at::Tensor soft_loss_sum(const at::Tensor& student_logits, const TeacherRows& teacher, const DistillLossOptions& o) {
  const double t = o.temperature;
  const at::Tensor s = narrow_vocab(student_logits, o.vocab).to(at::kFloat) / t;
  const at::Tensor log_q = at::log_softmax(s, -1);
  if (teacher.logits.defined()) {
    const at::Tensor z = narrow_vocab(teacher.logits, o.vocab).to(at::kFloat);
    TORCH_CHECK(z.sizes() == s.sizes(), "distillation: the teacher's logits ", z.sizes(), " and the student's ", s.sizes(),
                " differ in shape (set the shared vocabulary)");
    // Logits are finite, and so are both sides' log-probabilities (no device sync to check it).
    return divergence_sum(at::log_softmax(z / t, -1), log_q, o, /*finite=*/true) * (t * t);
  }
  TORCH_CHECK(teacher.topk_logprobs.defined() && teacher.topk_ids.defined() && teacher.rest_logprob.defined(),
              "distillation: the teacher rows hold neither logits nor a top-k cache");
  const at::Tensor ids = teacher.topk_ids.to(at::kLong);
  // The student's buckets: its log-probabilities at the k ids, and the log of its mass elsewhere.
  const at::Tensor log_q_top = log_q.gather(-1, ids);
  const at::Tensor lse = at::logsumexp(s, {-1}, /*keepdim=*/true);
  // Rows whose k ids cover the whole vocabulary have no mass outside: −inf, computed from zeros so
  // that the gradient stays finite.
  const at::Tensor outside = s.scatter(-1, ids, kNegInf);
  const at::Tensor empty = outside.ne(kNegInf).any(-1, /*keepdim=*/true).logical_not();
  const at::Tensor outside_safe = at::where(empty, at::zeros({}, s.options()), outside);
  const at::Tensor log_q_rest = at::where(empty, at::full({}, kNegInf, s.options()),
                                          at::logsumexp(outside_safe, {-1}, /*keepdim=*/true) - lse);
  const at::Tensor log_p = at::cat({teacher.topk_logprobs.to(at::kFloat), teacher.rest_logprob.to(at::kFloat).unsqueeze(-1)}, -1);
  const at::Tensor log_q_buckets = at::cat({log_q_top, log_q_rest}, -1);
  return divergence_sum(log_p, log_q_buckets, o, /*finite=*/false) * (t * t);
}

DistillSums distill_sums(const at::Tensor& student_logits, const TeacherRows& teacher, const at::Tensor& targets,
                         const DistillLossOptions& o) {
  const at::Tensor z = student_logits.to(at::kFloat);
  const at::Tensor soft = soft_loss_sum(z, teacher, o);
  // reduction 2 = sum, ignore_index -100.
  const at::Tensor ce = at::cross_entropy_loss(z, targets.to(z.device()), {}, 2, -100, 0.0);
  return {o.kd_ratio * soft + (1.0 - o.kd_ratio) * ce, soft.detach(), ce.detach()};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LinearDistill : public torch::autograd::Function<LinearDistill> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const at::Tensor& targets, const TeacherChunk* teacher, const DistillLossOptions* o,
                               int64_t chunk_rows) {
    const int64_t n = hidden.size(0);
    const bool grad_h = hidden.requires_grad(), grad_w = weight.requires_grad();
    const auto dtype = hidden.scalar_type();
    const at::Tensor w = weight.scalar_type() == dtype ? weight : weight.to(dtype);
    const auto f32 = hidden.options().dtype(at::kFloat);
    at::Tensor total = at::zeros({}, f32), soft = at::zeros({}, f32), ce = at::zeros({}, f32);
    at::Tensor dh = grad_h ? at::empty_like(hidden) : at::Tensor();
    at::Tensor dw = grad_w ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat)) : at::Tensor();
    for (int64_t start = 0; start < n; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, n - start);
      const at::Tensor h = hidden.narrow(0, start, rows);
      const TeacherRows tr = (*teacher)(start, rows);
      at::Tensor z = at::linear(h, w).to(at::kFloat).detach();
      if (grad_h || grad_w) z.requires_grad_(true);
      at::Tensor dz;
      {
        at::AutoGradMode enable(grad_h || grad_w);
        const DistillSums sums = distill_sums(z, tr, targets.narrow(0, start, rows), *o);
        total += sums.total.detach();
        soft += sums.soft;
        ce += sums.ce;
        if (grad_h || grad_w) dz = torch::autograd::grad({sums.total}, {z})[0].to(dtype);
      }
      if (grad_h) dh.narrow(0, start, rows).copy_(at::mm(dz, w));
      if (grad_w) dw.add_(at::mm(dz.t(), h).to(at::kFloat));
    }
    ctx->saved_data["dh"] = dh;
    ctx->saved_data["dw"] = dw;
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->mark_non_differentiable({soft, ce});
    return {total, soft, ce};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor g = grad_outputs[0];  // of the total; soft and ce are for the log only
    at::Tensor dh = ctx->saved_data["dh"].toTensor();
    at::Tensor dw = ctx->saved_data["dw"].toTensor();
    const auto weight_dtype = static_cast<at::ScalarType>(ctx->saved_data["weight_dtype"].toInt());
    at::Tensor out_h = dh.defined() ? (dh * g.to(dh.scalar_type())) : at::Tensor();
    at::Tensor out_w = dw.defined() ? (dw * g).to(weight_dtype) : at::Tensor();
    return {out_h, out_w, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

DistillSums linear_distill_sums(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                const TeacherChunk& teacher, const DistillLossOptions& options, int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "linear_distill_sums: hidden (N, H) and weight (V, H) disagree: ", hidden.sizes(), " vs ", weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "linear_distill_sums: targets must be (N,)");
  // A chunk's divergence keeps several (rows × V) fp32 tensors for its gradient, not one as the
  // cross-entropy does: a quarter of its rows.
  if (chunk_rows <= 0) chunk_rows = std::max<int64_t>(16, ops::auto_chunk_rows(weight.size(0)) / 4);
  variable_list out = LinearDistill::apply(hidden, weight, targets, &teacher, &options, chunk_rows);
  return {out[0], out[1], out[2]};
}

DistillSums causal_distill_sums(const at::Tensor& student_logits, const at::Tensor& teacher_logits, const at::Tensor& labels,
                                const DistillLossOptions& options) {
  TORCH_CHECK(student_logits.dim() == 3 && labels.dim() == 2, "causal_distill_sums: logits (B, T, V) and labels (B, T)");
  const int64_t t = labels.size(1);
  const at::Tensor next = labels.narrow(1, 1, t - 1).reshape({-1});
  const at::Tensor index = next.ne(-100).nonzero().squeeze(1);
  auto rows = [&](const at::Tensor& logits) {
    return logits.narrow(1, 0, t - 1).reshape({-1, logits.size(2)}).index_select(0, index);
  };
  return distill_sums(rows(student_logits), TeacherRows{.logits = rows(teacher_logits)}, next.index_select(0, index), options);
}

TeacherRows teacher_topk(const at::Tensor& teacher_logits, int64_t k, const DistillLossOptions& o) {
  const at::Tensor log_p = at::log_softmax(narrow_vocab(teacher_logits, o.vocab).to(at::kFloat) / o.temperature, -1);
  const int64_t v = log_p.size(-1);
  k = std::min(k, v);
  auto [values, ids] = at::topk(log_p, k, -1, /*largest=*/true, /*sorted=*/true);
  at::Tensor rest;
  if (k == v) {
    rest = at::full({log_p.size(0)}, kNegInf, log_p.options());
  } else {
    rest = at::logsumexp(log_p.scatter(-1, ids, kNegInf), {-1});
  }
  return {.logits = {}, .topk_logprobs = values, .topk_ids = ids, .rest_logprob = rest};
}

}  // namespace llmtune::train
