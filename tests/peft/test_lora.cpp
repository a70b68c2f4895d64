// PEFT adapters on the fixture models: PEFT builds and saves a LoRA / rsLoRA / DoRA adapter with
// non-zero B, and the logits of base + adapter in llmtune equal PEFT's.
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

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

// PEFT builds each module at adapter_config.json's rank: a config whose r (or rank_pattern)
// disagrees with the saved tensors is refused, naming the file and the tensor.
TEST(PeftAdapterErrors, ConfigRankThatDisagreesWithTheTensorsIsNamed) {
  fs::path adapter = fs::temp_directory_path() / ("llmtune-adapter-rank-" + std::to_string(::getpid()));
  fs::remove_all(adapter);
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  LoraConfig config;
  config.r = 4;
  config.target_modules = {"q_proj"};
  save_adapter(adapter, config, inject_lora(m, config));
  auto rewrite = [&](const std::string& extra) {
    std::ofstream(adapter / "adapter_config.json")
        << R"({"peft_type": "LORA", "lora_alpha": 8, "target_modules": ["q_proj"], )" << extra << "}";
  };
  rewrite(R"("r": 8)");
  try {
    open_adapter(adapter);
    FAIL();
  } catch (const AdapterError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find((adapter / "adapter_config.json").string() + ": r = 8"), std::string::npos) << m;
    EXPECT_NE(m.find("q_proj.lora_A.weight' in adapter_model.safetensors has rank 4"), std::string::npos) << m;
  }
  rewrite(R"("r": 8, "rank_pattern": {"q_proj": 4})");  // the per-module rank is what counts
  EXPECT_NO_THROW(open_adapter(adapter));
  rewrite(R"("r": 4)");
  EXPECT_NO_THROW(open_adapter(adapter));
  fs::remove_all(adapter);
}

TEST(PeftAdapterErrors, AWrongPathIsCalledAnAdapter) {
  const fs::path file = fs::temp_directory_path() / ("llmtune-adapter-file-" + std::to_string(::getpid()));
  std::ofstream(file) << "x";
  for (const fs::path& path : {file, file.parent_path() / "llmtune-no-such-adapter"}) {
    try {
      resolve_adapter_dir(path.string());
      FAIL() << path;
    } catch (const AdapterError& e) {
      EXPECT_NE(std::string(e.what()).find("adapter"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("model not found"), std::string::npos) << e.what();
    }
  }
  fs::remove(file);
}

TEST(LoraConfigJson, FieldsOfTheWrongTypeAreNamed) {
  for (const auto& [text, field] : {std::pair{R"({"lora_alpha": "big"})", "'lora_alpha' must be a number, got string"},
                                    {R"({"r": 4.5})", "'r' must be an integer"},
                                    {R"({"use_dora": "yes"})", "'use_dora' must be true or false"}}) {
    try {
      LoraConfig::from_json(nlohmann::json::parse(text), "a/adapter_config.json");
      FAIL() << text;
    } catch (const AdapterError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("a/adapter_config.json: field ") + field), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("[json.exception"), std::string::npos) << e.what();
    }
  }
}

TEST(LoraConfigJson, ALocalBaseIsRecordedAbsoluteAndAHubIdAsIs) {
  const fs::path cwd = fs::current_path();
  fs::current_path(fixture("llama3").parent_path());
  AdapterMethodPtr method = make_lora_method(LoraConfig{});
  method->set_base_model("llama3");
  EXPECT_EQ(fs::path(method->base_model()), fixture("llama3").lexically_normal()) << method->base_model();
  EXPECT_TRUE(fs::path(method->base_model()).is_absolute());
  method->set_base_model("meta-llama/Llama-3.2-1B");
  EXPECT_EQ(method->base_model(), "meta-llama/Llama-3.2-1B");
  fs::current_path(cwd);
}

}  // namespace
}  // namespace llmtune::peft
