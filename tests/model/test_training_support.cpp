// What training needs from the model: full fine-tuning gradients equal transformers', gradient
// checkpointing gives the same gradients as plain backward, and random init follows transformers'.
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "llmtune/model/causal_lm.h"
#include "llmtune/train/loss.h"
#include "support/interop.h"

namespace llmtune::model {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

double rel_err(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>() / b.to(at::kDouble).norm().item<double>();
}

// Every weight replaced by a trainable fp32 copy; returns them by name.
std::vector<std::pair<std::string, at::Tensor>> make_trainable(CausalLM& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& [name, slot] : m.named_weights()) {
    *slot = slot->detach().clone().requires_grad_(true);
    out.emplace_back(name, *slot);
  }
  m.retie_embeddings();
  return out;
}

struct Batch {
  at::Tensor ids, labels;
};

Batch make_batch(int64_t vocab) {
  at::manual_seed(11);
  at::Tensor ids = at::randint(0, vocab, {2, 16}, at::TensorOptions().dtype(at::kLong));
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 5).fill_(-100);  // a masked prompt
  labels[1].narrow(0, 12, 4).fill_(-100);
  return {ids, labels};
}

TEST(FullFinetune, LossAndGradientsEqualTransformers) {
  for (const std::string family : {"llama3", "qwen2", "gemma"}) {
    CausalLM m = CausalLM::load(fixture(family), c10::kCPU, at::kFloat);
    auto params = make_trainable(m);
    Batch b = make_batch(m.config().vocab_size);
    at::Tensor loss = train::causal_lm_loss(m.forward(b.ids), b.labels);
    loss.backward();
    std::string names;
    for (const auto& [n, _] : params) names += (names.empty() ? "" : ",") + n;
    auto ref = testing::call_python("full_finetune_grads", {b.ids, b.labels},
                                    {{"model_dir", fixture(family).string()}, {"names", names}});
    ASSERT_EQ(ref.size(), params.size() + 1);
    EXPECT_NEAR(loss.item<double>(), ref[0].item<double>(), 1e-5 * ref[0].item<double>()) << family;
    for (size_t i = 0; i < params.size(); ++i) {
      ASSERT_TRUE(params[i].second.grad().defined()) << family << " " << params[i].first;
      EXPECT_LE(rel_err(params[i].second.grad(), ref[i + 1]), 1e-4) << family << " " << params[i].first;
    }
  }
}

TEST(GradientCheckpointing, SameGradientsAsPlainBackward) {
  for (const std::string family : {"llama3", "mistral"}) {
    std::vector<at::Tensor> grads[2];
    double losses[2];
    for (int ckpt = 0; ckpt < 2; ++ckpt) {
      CausalLM m = CausalLM::load(fixture(family), c10::kCPU, at::kFloat);
      m.set_gradient_checkpointing(ckpt == 1);
      auto params = make_trainable(m);
      Batch b = make_batch(m.config().vocab_size);
      at::Tensor loss = train::causal_lm_loss(m.forward(b.ids), b.labels);
      loss.backward();
      losses[ckpt] = loss.item<double>();
      for (auto& [n, p] : params) grads[ckpt].push_back(p.grad());
    }
    EXPECT_DOUBLE_EQ(losses[0], losses[1]) << family;
    ASSERT_EQ(grads[0].size(), grads[1].size());
    for (size_t i = 0; i < grads[0].size(); ++i) EXPECT_LE(rel_err(grads[1][i], grads[0][i]), 1e-6) << family << " " << i;
  }
}

TEST(GradientCheckpointing, OnlyInputGradientWhenWeightsFrozen) {
  // Frozen weights: the checkpointed model must still pass gradients to a trainable embedding.
  CausalLM m = CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  m.set_gradient_checkpointing(true);
  auto slots = m.named_weights();
  *slots.front().second = slots.front().second->detach().clone().requires_grad_(true);
  m.retie_embeddings();
  Batch b = make_batch(m.config().vocab_size);
  train::causal_lm_loss(m.forward(b.ids), b.labels).backward();
  ASSERT_TRUE(m.embed_tokens().grad().defined());
  EXPECT_GT(m.embed_tokens().grad().abs().sum().item<double>(), 0.0);
}

TEST(InitRandom, FollowsTransformersInit) {
  CausalLM a = CausalLM::init_random(fixture("llama3"), c10::kCPU, at::kFloat, 5);
  CausalLM b = CausalLM::init_random(fixture("llama3"), c10::kCPU, at::kFloat, 5);
  CausalLM c = CausalLM::init_random(fixture("llama3"), c10::kCPU, at::kFloat, 6);
  const double std = a.config().initializer_range;
  auto wa = a.named_weights(), wb = b.named_weights(), wc = c.named_weights();
  for (size_t i = 0; i < wa.size(); ++i) {
    const std::string& name = wa[i].first;
    const at::Tensor& t = *wa[i].second;
    EXPECT_TRUE(t.equal(*wb[i].second)) << name << ": same seed, same weights";
    if (name.ends_with("norm.weight")) {
      EXPECT_TRUE(t.eq(1.0).all().item<bool>()) << name;
    } else {
      EXPECT_FALSE(t.equal(*wc[i].second)) << name << ": another seed, other weights";
      EXPECT_NEAR(t.std().item<double>(), std, 0.15 * std) << name;
      EXPECT_NEAR(t.mean().item<double>(), 0.0, 0.1 * std) << name;
    }
  }
  CausalLM g = CausalLM::init_random(fixture("gemma"), c10::kCPU, at::kFloat, 5);
  for (auto& [name, t] : g.named_weights()) {
    if (name.ends_with("norm.weight")) EXPECT_TRUE(t->eq(0.0).all().item<bool>()) << "gemma " << name;
  }
}

}  // namespace
}  // namespace llmtune::model
