// PEFT adapters on the fixture models: PEFT builds and saves a LoRA / rsLoRA / DoRA adapter with
// non-zero B, and the logits of base + adapter in llmtune equal PEFT's.
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/lora.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::peft {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

struct Case {
  std::string model, kind, targets;
};

class PeftAdapter : public ::testing::TestWithParam<Case> {};

TEST_P(PeftAdapter, LogitsEqualPeft) {
  const Case& c = GetParam();
  fs::path adapter = fs::temp_directory_path() / ("llmtune-adapter-" + c.model + "-" + c.kind + "-" + std::to_string(::getpid()));
  fs::remove_all(adapter);
  model::CausalLM m = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
  at::manual_seed(11);
  at::Tensor ids = at::randint(0, m.config().vocab_size, {2, 16}, at::TensorOptions().dtype(at::kLong));
  at::Tensor base_logits = m.forward(ids);
  at::Tensor ref = testing::call_python("peft_adapter_logits", {ids},
                                        {{"model_dir", fixture(c.model).string()}, {"adapter_dir", adapter.string()},
                                         {"kind", c.kind}, {"targets", c.targets}})[0];
  int64_t wrapped = apply_adapter(m, adapter);
  EXPECT_GT(wrapped, 0);
  at::Tensor ours = m.forward(ids);
  double scale = ref.abs().max().item<double>();
  // The adapter must matter, or the comparison below proves nothing.
  EXPECT_GT(testing::max_abs_diff(base_logits, ref), 1e-2 * scale);
  EXPECT_LE(testing::max_abs_diff(ours, ref), 1e-4 * scale) << c.model << " " << c.kind;
  fs::remove_all(adapter);
}

INSTANTIATE_TEST_SUITE_P(Kinds, PeftAdapter,
                         ::testing::Values(Case{"llama3", "lora", "q_proj,v_proj"}, Case{"llama3", "rslora", "all-linear"},
                                           Case{"llama3", "dora", "q_proj,k_proj,v_proj,o_proj"},
                                           Case{"llama-linear", "dora", "all-linear"}, Case{"qwen2", "lora", "all-linear"},
                                           Case{"gemma", "lora", "gate_proj,up_proj,down_proj"}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_" + info.param.kind;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(PeftAdapterErrors, MismatchedAndMalformedAdaptersAreNamed) {
  fs::path adapter = fs::temp_directory_path() / ("llmtune-adapter-bad-" + std::to_string(::getpid()));
  fs::remove_all(adapter);
  model::CausalLM llama = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  at::Tensor ids = at::randint(0, 100, {1, 4}, at::TensorOptions().dtype(at::kLong));
  testing::call_python("peft_adapter_logits", {ids},
                       {{"model_dir", fixture("llama3").string()}, {"adapter_dir", adapter.string()}, {"kind", "lora"},
                        {"targets", "q_proj,v_proj"}});
  // gemma's q_proj is [128, 64], llama3's [64, 64]: the shape error names the module.
  model::CausalLM gemma = model::CausalLM::load(fixture("gemma"), c10::kCPU, at::kFloat);
  try {
    apply_adapter(gemma, adapter);
    FAIL();
  } catch (const AdapterError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj"), std::string::npos) << e.what();
  }
  std::ofstream(adapter / "adapter_config.json") << "{\"peft_type\": \"PREFIX_TUNING\"}";
  EXPECT_THROW(apply_adapter(llama, adapter), AdapterError);
  std::ofstream(adapter / "adapter_config.json") << "{not json";
  EXPECT_THROW(apply_adapter(llama, adapter), AdapterError);
  EXPECT_THROW(apply_adapter(llama, adapter / "absent"), AdapterError);
  fs::remove_all(adapter);
}

}  // namespace
}  // namespace llmtune::peft
