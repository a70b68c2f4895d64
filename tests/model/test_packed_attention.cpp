// Packed rows without a dense mask: the loss of a packed batch and its gradients (every weight)
// equal the sum over its examples run one at a time, for a full-attention and a sliding-window
// family, with and without gradient checkpointing. (The CUDA varlen flash path is checked by the
// CUDA suite when a GPU is present.)
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>


#include "data/data_reference.h"
#include "llmtune/data/batcher.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/train/loss.h"

namespace llmtune::model {
namespace {

std::vector<data::Example> examples(int n, int max_len, uint32_t seed) {
  return testing::random_training_examples(n, max_len, seed);
}

// Every weight made trainable (fp32 copies), as full fine-tuning does.
std::vector<at::Tensor> make_trainable(CausalLM& m) {
  std::vector<at::Tensor> out;
  for (auto& [name, slot] : m.named_weights()) {
    *slot = slot->detach().clone().requires_grad_(true);
    out.push_back(*slot);
  }
  m.retie_embeddings();
  return out;
}

void check_family(const std::string& fixture, bool checkpointing) {
  CausalLM packed_model = CausalLM::load(testing::fixture_model_dir(fixture), c10::kCPU, at::kFloat);
  CausalLM single_model = CausalLM::load(testing::fixture_model_dir(fixture), c10::kCPU, at::kFloat);
  packed_model.set_gradient_checkpointing(checkpointing);
  auto wp = make_trainable(packed_model), ws = make_trainable(single_model);
  auto ex = examples(9, 20, 5);
  data::Batcher batcher(ex, {.batch_size = 2, .max_seq_len = 48, .packing = true, .pad_to_multiple_of = 8, .shuffle = false});
  const data::Batch batch = batcher.next();
  ASSERT_TRUE(batch.packed) << "the batch must hold packed rows";
  at::Tensor packed_loss = train::batch_loss_sum(packed_model, batch);
  packed_loss.backward();

  // The same examples, each alone in its own batch.
  double single_loss = 0;
  for (const auto& row : batcher.batch_rows(0, 0)) {
    for (int64_t idx : row) {
      data::Batcher one({ex[idx]}, {.batch_size = 1, .max_seq_len = 48, .packing = false, .pad_to_multiple_of = 1, .shuffle = false});
      at::Tensor loss = train::batch_loss_sum(single_model, one.next());
      loss.backward();
      single_loss += loss.item<double>();
    }
  }
  EXPECT_NEAR(packed_loss.item<double>(), single_loss, 1e-5 * std::abs(single_loss)) << fixture;
  for (size_t i = 0; i < wp.size(); ++i) {
    ASSERT_TRUE(wp[i].grad().defined() && ws[i].grad().defined());
    const double scale = std::max(ws[i].grad().abs().max().item<double>(), 1e-3);
    EXPECT_LE((wp[i].grad() - ws[i].grad()).abs().max().item<double>(), 1e-5 * scale) << fixture << " weight " << i;
  }
}

TEST(PackedAttention, LossAndGradientsEqualOneExampleAtATime) { check_family("llama3", false); }
TEST(PackedAttention, SlidingWindowFamily) { check_family("mistral", false); }
TEST(PackedAttention, WithGradientCheckpointing) { check_family("qwen2", true); }

}  // namespace
}  // namespace llmtune::model
