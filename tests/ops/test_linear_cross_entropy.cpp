// The chunked LM head + cross-entropy against the unchunked reference (at::linear, fp32
// cross_entropy, autograd): loss and the gradients of the hidden states and of the weight, for
// several chunk sizes, with ignored positions, in fp32 (1e-6 relative) and bf16.
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include "llmtune/ops/linear_cross_entropy.h"
#include "llmtune/train/loss.h"
#include "data/data_reference.h"
#include "support/interop.h"

namespace llmtune::ops {
namespace {

double rel(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / b.to(at::kDouble).abs().max().item<double>();
}

struct Result {
  at::Tensor loss, dh, dw;
};

Result reference(const at::Tensor& h0, const at::Tensor& w0, const at::Tensor& targets) {
  at::Tensor h = h0.detach().requires_grad_(true), w = w0.detach().requires_grad_(true);
  at::Tensor loss = at::cross_entropy_loss(at::linear(h, w.to(h.scalar_type())).to(at::kFloat), targets, {}, 2, -100, 0.0);
  (loss * 0.37).backward();  // a non-unit upstream gradient, as the loss / n_targets of a step
  return {loss.detach(), h.grad(), w.grad()};
}

Result chunked(const at::Tensor& h0, const at::Tensor& w0, const at::Tensor& targets, int64_t chunk) {
  at::Tensor h = h0.detach().requires_grad_(true), w = w0.detach().requires_grad_(true);
  at::Tensor loss = linear_cross_entropy_sum(h, w, targets, chunk);
  (loss * 0.37).backward();
  return {loss.detach(), h.grad(), w.grad()};
}

TEST(LinearCrossEntropy, EqualsTheUnchunkedReferenceFp32) {
  at::manual_seed(0);
  const int64_t n = 53, hdim = 24, vocab = 301;
  at::Tensor h = at::randn({n, hdim}), w = at::randn({vocab, hdim}) * 0.5;
  at::Tensor targets = at::randint(0, vocab, {n}, at::TensorOptions().dtype(at::kLong));
  const Result ref = reference(h, w, targets);
  for (int64_t chunk : {1, 7, 16, 53, 1000, 0}) {
    const Result got = chunked(h, w, targets, chunk);
    EXPECT_LE(rel(got.loss, ref.loss), 1e-6) << "chunk " << chunk;
    EXPECT_LE(rel(got.dh, ref.dh), 1e-6) << "chunk " << chunk;
    EXPECT_LE(rel(got.dw, ref.dw), 1e-6) << "chunk " << chunk;
  }
}

TEST(LinearCrossEntropy, Bf16HiddenWithFp32MasterWeight) {
  at::manual_seed(1);
  const int64_t n = 40, hdim = 32, vocab = 257;
  at::Tensor h = at::randn({n, hdim}).to(at::kBFloat16), w = at::randn({vocab, hdim}) * 0.3;
  at::Tensor targets = at::randint(0, vocab, {n}, at::TensorOptions().dtype(at::kLong));
  const Result ref = reference(h, w, targets);
  const Result got = chunked(h, w, targets, 9);
  EXPECT_EQ(got.dh.scalar_type(), at::kBFloat16);
  EXPECT_EQ(got.dw.scalar_type(), at::kFloat);
  EXPECT_LE(rel(got.loss, ref.loss), 1e-5);
  EXPECT_LE(rel(got.dh, ref.dh), 2e-2);  // bf16 rounding of dlogits and of the products
  EXPECT_LE(rel(got.dw, ref.dw), 2e-2);
}

// Through the training loss: shifted labels with ignored positions (-100), only the trained
// positions gathered, equal to transformers' loss on the full logits.
TEST(LinearCrossEntropy, TrainingLossEqualsTheFullLogitsLossWithIgnoredPositions) {
  auto m = model::CausalLM::load(testing::fixture_model_dir("llama3"), c10::kCPU, at::kFloat);
  at::manual_seed(2);
  at::Tensor ids = at::randint(0, 100, {3, 17}, at::TensorOptions().dtype(at::kLong));
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 5).fill_(-100);
  labels[1].narrow(0, 10, 7).fill_(-100);
  at::Tensor ref = train::causal_lm_loss_sum(m.forward(ids), labels);
  auto [index, targets] = train::trained_targets(labels);
  EXPECT_EQ(index.numel(), train::count_targets(labels));
  for (int64_t chunk : {1, 5, 0}) {
    at::Tensor got = train::lm_loss_sum(m, m.forward_hidden(ids), index, targets, chunk);
    EXPECT_LE(rel(got, ref), 1e-6) << "chunk " << chunk;
  }
}

}  // namespace
}  // namespace llmtune::ops
