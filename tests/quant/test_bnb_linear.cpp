// The frozen 4-bit linear against bitsandbytes' Linear4bit, and a model quantized while it loads
// against transformers loading it with BitsAndBytesConfig (CPU, fp32 compute).
#include <ATen/ops/arange.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include "llmtune/model/causal_lm.h"
#include "llmtune/quant/bnb_linear.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

using testing::call_python;

TEST(FourBitLinear, ForwardAndInputGradientEqualLinear4bit) {
  at::manual_seed(1);
  for (auto type : {FourBit::NF4, FourBit::FP4}) {
    for (bool nested : {false, true}) {
      const at::Tensor w = at::randn({96, 128}) * 0.05, b = at::randn({96}) * 0.1;
      const at::Tensor x = at::randn({3, 5, 128}).requires_grad_(true);
      FourBitLinear layer(quantize_4bit(w, type, 64, nested), b);
      at::Tensor y = layer.forward(x);
      y.sum().backward();
      auto ref = call_python("bnb_linear4bit", {x.detach(), w, b},
                             {{"quant_type", four_bit_name(type)}, {"blocksize", 64}, {"double_quant", nested}});
      // Double quantization may pick a neighbouring absmax code (see test_bnb.cpp): then the
      // blocks differ by one step of the nested map.
      const double tol = nested ? 2e-2 : 1e-6;
      EXPECT_TRUE(at::allclose(y, ref[0], tol, tol)) << four_bit_name(type) << " nested=" << nested << " max diff "
                                                     << (y - ref[0]).abs().max().item<float>();
      EXPECT_TRUE(at::allclose(x.grad(), ref[1], tol, tol)) << four_bit_name(type) << " nested=" << nested;
      EXPECT_EQ(layer.in_features(), 128);
      EXPECT_EQ(layer.out_features(), 96);
    }
  }
}

TEST(FourBitLinear, AModelQuantizedWhileLoadingEqualsTransformersWithBitsandbytes) {
  const std::string dir = std::string(LLMTUNE_FIXTURES_DIR) + "/models/llama-linear";
  auto model = model::CausalLM::load(dir, c10::Device(c10::kCPU), at::kFloat, four_bit_linear_factory({}));
  int quantized = 0;
  for (const auto& [path, linear] : model.named_linears())
    quantized += dynamic_cast<const FourBitLinear*>(linear->get()) != nullptr;
  EXPECT_GT(quantized, 0);
  const at::Tensor ids = at::arange(1, 17, at::kLong).unsqueeze(0);
  const at::Tensor ours = model.forward(ids);
  const at::Tensor ref = call_python("bnb_causal_lm_logits", {ids}, {{"model_dir", dir}, {"quant_type", "nf4"}})[0];
  EXPECT_TRUE(at::allclose(ours, ref, 1e-4, 1e-4)) << "max diff " << (ours - ref).abs().max().item<float>();
}

}  // namespace
}  // namespace llmtune::quant
