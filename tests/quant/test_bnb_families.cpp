// NF4 while loading, on every family added after Llama's: the logits equal transformers loading
// the same directory with bitsandbytes (fp32 compute), so QLoRA's base is the reference's base.
#include <ATen/ops/arange.h>
#include <gtest/gtest.h>

#include "llmtune/model/causal_lm.h"
#include "llmtune/quant/bnb_linear.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

using testing::call_python;

class FourBitFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(FourBitFamily, QuantizedWhileLoadingEqualsTransformersWithBitsandbytes) {
  const std::string dir = std::string(LLMTUNE_FIXTURES_DIR) + "/models/" + GetParam();
  auto model = model::CausalLM::load(dir, c10::Device(c10::kCPU), at::kFloat, four_bit_linear_factory({}));
  int quantized = 0;
  for (const auto& [path, linear] : model.named_linears())
    quantized += dynamic_cast<const FourBitLinear*>(linear->get()) != nullptr;
  EXPECT_GE(quantized, 4 * model.config().n_layers) << GetParam();
  const at::Tensor ids = at::arange(1, 25, at::kLong).unsqueeze(0);
  const at::Tensor ours = model.forward(ids);
  const at::Tensor ref = call_python("bnb_causal_lm_logits", {ids}, {{"model_dir", dir}, {"quant_type", "nf4"}})[0];
  ASSERT_EQ(ours.sizes(), ref.sizes());
  EXPECT_TRUE(at::allclose(ours, ref, 1e-4, 1e-4)) << GetParam() << " max diff " << (ours - ref).abs().max().item<float>();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FourBitFamily,
                         ::testing::Values("qwen3", "gemma2", "gemma3", "phi3", "phi4-mini", "gpt2", "smollm2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace llmtune::quant
