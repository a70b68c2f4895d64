// The distillation losses (train/distill_loss.h) against the Python oracles of
// tests/interop/distill_reference.py: TRL's GKD generalized JSD for every divergence, torchtune's
// ForwardKLLoss for the forward-KL gradient, torch's cross-entropy, and the k + 1 bucket formula of
// the top-k teacher cache; values and gradients w.r.t. the student, fp32, 1e-5 relative. Then the
// chunked LM-head path against the full logits, vocabulary truncation, and the sums' normalisation.
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>

#include <sstream>

#include "llmtune/train/distill_loss.h"
#include "support/interop.h"

namespace llmtune::train {
namespace {

// Shapes: student (B, T, V_s), teacher (B, T, V), labels (B, T) unshifted; rows (N, V).
constexpr int64_t kBatch = 3, kSeq = 7, kVocab = 50;
constexpr double kRel = 1e-5, kAbs = 1e-6;  // fp32 against float64 oracles; the floor for values near 0

// Elementwise |ours − ref| <= kRel·|ref| + kAbs, and ours finite.
::testing::AssertionResult close(const at::Tensor& ours, const at::Tensor& ref) {
  at::Tensor a = ours.detach().cpu().to(at::kDouble), b = ref.detach().cpu().to(at::kDouble);
  if (a.numel() == 1 && b.numel() == 1) a = a.reshape({1}), b = b.reshape({1});
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  if (!at::isfinite(a).all().item<bool>()) return ::testing::AssertionFailure() << "non-finite values";
  at::Tensor excess = ((a - b).abs() - (b.abs() * kRel + kAbs)).reshape(-1);
  const int64_t worst = excess.argmax().item<int64_t>();
  if (excess[worst].item<double>() <= 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "at flat index " << worst << " of " << a.sizes() << ": ours "
                                       << a.reshape(-1)[worst].item<double>() << ", reference "
                                       << b.reshape(-1)[worst].item<double>()
                                       << " (max |diff| " << testing::max_abs_diff(a, b) << ")";
}

struct Case {
  std::string divergence;
  double beta = 0.5;
  double temperature = 1.0;
  double kd_ratio = 1.0;
  int64_t vocab = 0;
};

std::string label(const Case& c) {
  std::ostringstream s;
  s << c.divergence << " beta " << c.beta << " T " << c.temperature << " kd " << c.kd_ratio << " vocab " << c.vocab;
  return s.str();
}

DistillLossOptions options(const Case& c) {
  return {.divergence = divergence_from_name(c.divergence), .beta = c.beta, .temperature = c.temperature,
          .kd_ratio = c.kd_ratio, .vocab = c.vocab};
}

nlohmann::json cases_json(const std::vector<Case>& cases) {
  nlohmann::json out = nlohmann::json::array();
  for (const Case& c : cases)
    out.push_back({{"divergence", c.divergence}, {"beta", c.beta}, {"temperature", c.temperature},
                   {"kd_ratio", c.kd_ratio}, {"vocab", c.vocab}});
  return out;
}

// forward_kl, reverse_kl and jsd at β 0.1, 0.5, 0.9, each at T 1 and 2.
std::vector<Case> every_divergence(double kd_ratio = 1.0, int64_t vocab = 0) {
  std::vector<Case> cases;
  for (double t : {1.0, 2.0}) {
    cases.push_back({"forward_kl", 0.5, t, kd_ratio, vocab});
    cases.push_back({"reverse_kl", 0.5, t, kd_ratio, vocab});
    for (double beta : {0.1, 0.5, 0.9}) cases.push_back({"jsd", beta, t, kd_ratio, vocab});
  }
  return cases;
}

struct Batch {
  at::Tensor student, teacher, labels;
};

// Random logits; labels with a masked prompt, -100 holes in the middle, and a last row with no
// trained token at all.
Batch random_batch(uint64_t seed, int64_t student_vocab = kVocab, int64_t seq = kSeq) {
  at::manual_seed(seed);
  Batch b{at::randn({kBatch, seq, student_vocab}) * 2, at::randn({kBatch, seq, kVocab}) * 3,
          at::randint(0, kVocab - 5, {kBatch, seq}, at::TensorOptions().dtype(at::kLong))};
  b.labels[0].narrow(0, 0, 2).fill_(-100);
  b.labels[0][4] = -100;
  b.labels[1].narrow(0, 3, 2).fill_(-100);
  b.labels[2].fill_(-100);
  return b;
}

// Our causal sums and d total / d student: values (3,) = total, soft, ce.
struct Result {
  at::Tensor values, grad;
};

Result causal(const Batch& b, const DistillLossOptions& o) {
  at::Tensor s = b.student.detach().clone().requires_grad_(true);
  DistillSums sums = causal_distill_sums(s, b.teacher, b.labels, o);
  EXPECT_FALSE(sums.soft.requires_grad());
  EXPECT_FALSE(sums.ce.requires_grad());
  sums.total.backward();
  return {at::stack({sums.total.detach(), sums.soft, sums.ce}), s.grad()};
}

// The trained positions of a causal batch as flat row indices into (B·T) and the labels they predict.
std::pair<at::Tensor, at::Tensor> trained_rows(const at::Tensor& labels) {
  const int64_t b = labels.size(0), t = labels.size(1);
  at::Tensor next = labels.narrow(1, 1, t - 1), trained = next != -100;
  at::Tensor positions = at::arange(b * t, at::TensorOptions().dtype(at::kLong)).reshape({b, t}).narrow(1, 0, t - 1);
  return {positions.masked_select(trained), next.masked_select(trained)};
}

TEST(DistillLoss, DivergenceNames) {
  EXPECT_EQ(divergence_from_name("forward_kl"), Divergence::ForwardKL);
  EXPECT_EQ(divergence_from_name("reverse_kl"), Divergence::ReverseKL);
  EXPECT_EQ(divergence_from_name("jsd"), Divergence::JSD);
  EXPECT_ANY_THROW(divergence_from_name("kl"));
}

// Every divergence at T 1 and 2 against TRL's generalized_jsd_loss × T² (β = 0 and 1 of the JSD
// are TRL's forward and reverse KL), the CE against torch's; gradients of the soft part (kd 1).
TEST(DistillLoss, CausalSumsMatchTrlForEveryDivergence) {
  const Batch b = random_batch(11);
  std::vector<Case> cases = every_divergence();
  cases.push_back({"jsd", 0.0, 2.0});
  cases.push_back({"jsd", 1.0, 2.0});
  auto ref = testing::call_python("distill_causal_reference", {b.student, b.teacher, b.labels},
                                  {{"cases", cases_json(cases)}});
  ASSERT_EQ(ref.size(), 2 * cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Result ours = causal(b, options(cases[i]));
    EXPECT_TRUE(close(ours.values, ref[2 * i])) << label(cases[i]) << " (total, soft, ce)";
    EXPECT_TRUE(close(ours.grad, ref[2 * i + 1][1])) << label(cases[i]) << " d soft / d student";
    EXPECT_GT(ours.values[1].item<double>(), 0.0) << label(cases[i]);
  }
}

// torchtune's ForwardKLLoss is −Σ p log q: the forward KL plus the teacher's entropy, with the
// same gradient.
TEST(DistillLoss, ForwardKlMatchesTorchtune) {
  const Batch b = random_batch(12);
  auto ref = testing::call_python("torchtune_forward_kl_reference", {b.student, b.teacher, b.labels});
  ASSERT_EQ(ref.size(), 2u);
  const Result ours = causal(b, options({"forward_kl", 0.5, 1.0}));
  EXPECT_TRUE(close(ours.grad, ref[1])) << "d forward KL / d student vs torchtune";
  EXPECT_TRUE(close(ours.values[1] + ref[0][1], ref[0][0])) << "forward KL + teacher entropy vs torchtune";
}

// total = kd·soft + (1 − kd)·ce, its gradient included; distill_sums on the trained rows gives
// the same as causal_distill_sums.
TEST(DistillLoss, KdRatioMixesSoftAndCrossEntropy) {
  const Batch b = random_batch(13);
  std::vector<Case> cases;
  for (double kd : {0.0, 0.3, 1.0}) {
    cases.push_back({"forward_kl", 0.5, 2.0, kd});
    cases.push_back({"jsd", 0.5, 1.0, kd});
  }
  auto ref = testing::call_python("distill_causal_reference", {b.student, b.teacher, b.labels},
                                  {{"cases", cases_json(cases)}});
  ASSERT_EQ(ref.size(), 2 * cases.size());
  auto [rows, targets] = trained_rows(b.labels);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const Result ours = causal(b, options(c));
    EXPECT_TRUE(close(ours.values, ref[2 * i])) << label(c) << " (total, soft, ce)";
    EXPECT_TRUE(close(ours.grad, ref[2 * i + 1][0])) << label(c) << " d total / d student";
    EXPECT_TRUE(close(ours.values[0], ours.values[1] * c.kd_ratio + ours.values[2] * (1 - c.kd_ratio))) << label(c);

    at::Tensor s = b.student.detach().clone().requires_grad_(true);
    DistillSums sums = distill_sums(s.reshape({-1, kVocab}).index_select(0, rows),
                                    {.logits = b.teacher.reshape({-1, kVocab}).index_select(0, rows)}, targets, options(c));
    sums.total.backward();
    EXPECT_TRUE(close(at::stack({sums.total.detach(), sums.soft, sums.ce}), ref[2 * i])) << label(c) << " distill_sums";
    EXPECT_TRUE(close(s.grad(), ref[2 * i + 1][0])) << label(c) << " distill_sums d total / d student";
  }
}

// The first options.vocab columns are compared: a teacher of width V and a student of width V + 3
// with vocab = V − 5 equal the oracle on those columns (the soft part; kd 1; the CE over all
// V + 3). Without `vocab`, unequal widths are refused.
TEST(DistillLoss, VocabTruncationComparesTheSharedColumns) {
  const Batch b = random_batch(14, kVocab + 3);
  const std::vector<Case> cases = every_divergence(1.0, kVocab - 5);
  auto ref = testing::call_python("distill_causal_reference", {b.student, b.teacher, b.labels},
                                  {{"cases", cases_json(cases)}});
  ASSERT_EQ(ref.size(), 2 * cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Result ours = causal(b, options(cases[i]));
    // The cross-entropy stays over the student's whole vocabulary.
    EXPECT_TRUE(close(ours.values, ref[2 * i])) << label(cases[i]) << " (total, soft, ce)";
    EXPECT_TRUE(close(ours.grad, ref[2 * i + 1][1])) << label(cases[i]) << " d soft / d student";
  }
  EXPECT_ANY_THROW(causal_distill_sums(b.student, b.teacher, b.labels, options({"forward_kl"})));
}

// Teacher and student rows of one batch, flattened: (N, V).
std::pair<at::Tensor, at::Tensor> flat_rows(uint64_t seed, int64_t student_vocab = kVocab) {
  const Batch b = random_batch(seed, student_vocab);
  return {b.student.reshape({-1, student_vocab}), b.teacher.reshape({-1, kVocab})};
}

Result soft(const at::Tensor& student, const TeacherRows& teacher, const DistillLossOptions& o) {
  at::Tensor s = student.detach().clone().requires_grad_(true);
  at::Tensor loss = soft_loss_sum(s, teacher, o);
  loss.backward();
  return {loss.detach(), s.grad()};
}

// A cache that keeps every token (k = V, or more) is the full distribution.
TEST(DistillLoss, TopkWithEveryTokenEqualsFullLogits) {
  auto [student, teacher] = flat_rows(15);
  for (const Case& c : every_divergence()) {
    const DistillLossOptions o = options(c);
    const Result full = soft(student, {.logits = teacher}, o);
    for (int64_t k : {kVocab, kVocab + 10}) {
      const TeacherRows cache = teacher_topk(teacher, k, o);
      ASSERT_EQ(cache.topk_ids.size(1), kVocab) << k;
      EXPECT_TRUE(at::isinf(cache.rest_logprob).all().item<bool>()) << "rest of a full cache is −inf";
      const Result got = soft(student, cache, o);
      EXPECT_TRUE(close(got.values, full.values)) << label(c) << " k " << k;
      EXPECT_TRUE(close(got.grad, full.grad)) << label(c) << " k " << k;
    }
  }
}

// The cache rows sorted by token id, so that the order within a row does not matter.
std::tuple<at::Tensor, at::Tensor> by_id(const at::Tensor& logprobs, const at::Tensor& ids) {
  auto [sorted, order] = at::sort(ids, -1);
  return {logprobs.gather(-1, order), sorted};
}

// k < V: teacher_topk is the Python top-k of log_softmax(t / T) (with vocab truncation too), and
// soft_loss_sum over the k + 1 buckets equals the bucket formula, from the Python cache and from ours.
TEST(DistillLoss, TopkCacheMatchesTheBucketFormula) {
  const int64_t k = 10;
  for (int64_t vocab : {int64_t{0}, kVocab - 5}) {
    auto [student, teacher] = flat_rows(16, vocab ? kVocab + 3 : kVocab);
    for (double t : {1.0, 2.0}) {
      std::vector<Case> cases;
      for (const Case& c : every_divergence(1.0, vocab))
        if (c.temperature == t) cases.push_back(c);
      auto ref = testing::call_python("distill_topk_reference", {student, teacher},
                                      {{"k", k}, {"temperature", t}, {"cases", cases_json(cases)}, {"vocab", vocab}});
      ASSERT_EQ(ref.size(), 3 + 2 * cases.size());
      const TeacherRows python_cache{.topk_logprobs = ref[0], .topk_ids = ref[1], .rest_logprob = ref[2]};
      const TeacherRows ours_cache = teacher_topk(teacher, k, options(cases[0]));
      auto [ours_lp, ours_ids] = by_id(ours_cache.topk_logprobs, ours_cache.topk_ids);
      auto [ref_lp, ref_ids] = by_id(ref[0], ref[1]);
      const std::string where = "vocab " + std::to_string(vocab) + " T " + std::to_string(t);
      EXPECT_TRUE(at::equal(ours_ids, ref_ids)) << where << " top-k ids";
      EXPECT_TRUE(close(ours_lp, ref_lp)) << where << " top-k log-probs";
      EXPECT_TRUE(close(ours_cache.rest_logprob, ref[2])) << where << " rest log-prob";
      for (size_t i = 0; i < cases.size(); ++i) {
        const DistillLossOptions o = options(cases[i]);
        const Result from_python = soft(student, python_cache, o);
        EXPECT_TRUE(close(from_python.values, ref[3 + 2 * i])) << label(cases[i]) << " python cache";
        EXPECT_TRUE(close(from_python.grad, ref[4 + 2 * i])) << label(cases[i]) << " python cache grad";
        const Result from_ours = soft(student, ours_cache, o);
        EXPECT_TRUE(close(from_ours.values, ref[3 + 2 * i])) << label(cases[i]) << " our cache";
        EXPECT_TRUE(close(from_ours.grad, ref[4 + 2 * i])) << label(cases[i]) << " our cache grad";
      }
    }
  }
}

// The chunked LM head (chunk_rows 4 < N: several chunks, the last one partial) equals distill_sums
// on the full logits, values and the gradients of hidden and weight, for full and top-k teachers.
TEST(DistillLoss, LinearChunkedEqualsFullLogits) {
  at::manual_seed(17);
  const int64_t n = 18, hdim = 16, chunk = 4;
  at::Tensor hidden = at::randn({n, hdim}), weight = at::randn({kVocab, hdim}) * 0.3;
  at::Tensor teacher = at::randn({n, kVocab}) * 3;
  at::Tensor targets = at::randint(0, kVocab, {n}, at::TensorOptions().dtype(at::kLong));
  for (Case c : {Case{"forward_kl", 0.5, 1.0}, Case{"reverse_kl", 0.5, 2.0}, Case{"jsd", 0.1, 2.0}, Case{"jsd", 0.9, 1.0}}) {
    c.kd_ratio = 0.3;
    const DistillLossOptions o = options(c);
    for (bool topk : {false, true}) {
      const std::string what = label(c) + (topk ? " top-k teacher" : " full teacher");
      const TeacherRows full = topk ? teacher_topk(teacher, 8, o) : TeacherRows{.logits = teacher};
      std::vector<std::pair<int64_t, int64_t>> calls;
      TeacherChunk chunk_of = [&](int64_t start, int64_t rows) {
        calls.emplace_back(start, rows);
        if (!topk) return TeacherRows{.logits = teacher.narrow(0, start, rows)};
        return TeacherRows{.topk_logprobs = full.topk_logprobs.narrow(0, start, rows),
                           .topk_ids = full.topk_ids.narrow(0, start, rows),
                           .rest_logprob = full.rest_logprob.narrow(0, start, rows)};
      };
      at::Tensor h = hidden.clone().requires_grad_(true), w = weight.clone().requires_grad_(true);
      DistillSums got = linear_distill_sums(h, w, targets, chunk_of, o, chunk);
      (got.total * 0.37).backward();  // a non-unit upstream gradient, as loss / tokens of a step
      at::Tensor h_ref = hidden.clone().requires_grad_(true), w_ref = weight.clone().requires_grad_(true);
      DistillSums ref = distill_sums(at::linear(h_ref, w_ref), full, targets, o);
      (ref.total * 0.37).backward();
      EXPECT_TRUE(close(at::stack({got.total.detach(), got.soft, got.ce}),
                        at::stack({ref.total.detach(), ref.soft, ref.ce}))) << what << " (total, soft, ce)";
      EXPECT_TRUE(close(h.grad(), h_ref.grad())) << what << " d hidden";
      EXPECT_TRUE(close(w.grad(), w_ref.grad())) << what << " d weight";
      // The chunks cover [0, n) in order, none larger than chunk_rows.
      int64_t next = 0;
      for (auto [start, rows] : calls) {
        EXPECT_EQ(start, next) << what;
        EXPECT_LE(rows, chunk) << what;
        next = start + rows;
      }
      EXPECT_EQ(next, n) << what;
      EXPECT_GE(calls.size(), static_cast<size_t>((n + chunk - 1) / chunk)) << what;
    }
  }
}

// Sums, not means: a batch's sums are the sums of its halves' (gradient accumulation), and
// padding every row longer with −100 labels changes nothing; no trained token gives 0, not NaN.
TEST(DistillLoss, SumsAddUpOverHalvesAndIgnorePadding) {
  const Batch b = random_batch(18);
  const int64_t pad = 4;
  at::Tensor padded_labels = at::cat({b.labels, at::full({kBatch, pad}, -100, b.labels.options())}, 1);
  const Batch padded{at::cat({b.student, at::randn({kBatch, pad, kVocab})}, 1),
                     at::cat({b.teacher, at::randn({kBatch, pad, kVocab})}, 1), padded_labels};
  for (Case c : every_divergence()) {
    c.kd_ratio = 0.3;
    const DistillLossOptions o = options(c);
    const Result whole = causal(b, o);
    const Batch first{b.student.narrow(0, 0, 2), b.teacher.narrow(0, 0, 2), b.labels.narrow(0, 0, 2)};
    const Batch second{b.student.narrow(0, 2, 1), b.teacher.narrow(0, 2, 1), b.labels.narrow(0, 2, 1)};
    const Result r1 = causal(first, o), r2 = causal(second, o);
    EXPECT_TRUE(close(r1.values + r2.values, whole.values)) << label(c) << " halves";
    EXPECT_TRUE(close(at::cat({r1.grad, r2.grad}), whole.grad)) << label(c) << " halves' gradients";
    // The last row has no trained token.
    EXPECT_TRUE(close(r2.values, at::zeros({3}, at::kDouble))) << label(c) << " empty row";
    EXPECT_TRUE(close(r2.grad, at::zeros_like(r2.grad))) << label(c) << " empty row gradient";

    const Result longer = causal(padded, o);
    EXPECT_TRUE(close(longer.values, whole.values)) << label(c) << " padded";
    EXPECT_TRUE(close(longer.grad.narrow(1, 0, kSeq), whole.grad)) << label(c) << " padded gradient";
    EXPECT_TRUE(close(longer.grad.narrow(1, kSeq, pad), at::zeros({kBatch, pad, kVocab}))) << label(c) << " pad grad";
  }
}

}  // namespace
}  // namespace llmtune::train
