// Every family against transformers on the tiny fixtures (tests/fixtures/make_models.py): logits,
// KV-cached decoding against full recomputation, greedy generation, bf16, and config errors.
#include <ATen/ops/cat.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "llmtune/model/causal_lm.h"
#include "llmtune/model/generate.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::model {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

class CausalLMFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(CausalLMFamily, LogitsEqualTransformersFp32) {
  CausalLM m = CausalLM::load(fixture(GetParam()), c10::kCPU, at::kFloat);
  at::manual_seed(7);
  at::Tensor ids = at::randint(0, m.config().vocab_size, {2, 24}, at::TensorOptions().dtype(at::kLong));
  at::Tensor ours = m.forward(ids);
  at::Tensor ref = testing::call_python("causal_lm_logits", {ids}, {{"model_dir", fixture(GetParam()).string()}})[0];
  ASSERT_EQ(ours.sizes(), ref.sizes());
  EXPECT_LE(testing::max_abs_diff(ours, ref), 1e-4 * max_abs(ref)) << GetParam();
}

TEST_P(CausalLMFamily, LogitsEqualTransformersBf16) {
  CausalLM m = CausalLM::load(fixture(GetParam()), c10::kCPU, at::kBFloat16);
  at::manual_seed(8);
  at::Tensor ids = at::randint(0, m.config().vocab_size, {1, 20}, at::TensorOptions().dtype(at::kLong));
  at::Tensor ours = m.forward(ids);
  ASSERT_EQ(ours.scalar_type(), at::kBFloat16);
  at::Tensor ref = testing::call_python("causal_lm_logits", {ids},
                                        {{"model_dir", fixture(GetParam()).string()}, {"dtype", "bfloat16"}})[0];
  // Same operations in bf16 with possibly different kernels and summation orders: a few bf16 ulps
  // of the largest logit.
  EXPECT_LE(testing::max_abs_diff(ours, ref), 3e-2 * max_abs(ref)) << GetParam();
}

TEST_P(CausalLMFamily, CachedDecodingEqualsFullRecomputation) {
  CausalLM m = CausalLM::load(fixture(GetParam()), c10::kCPU, at::kFloat);
  at::manual_seed(9);
  // Longrope rotates with other factors past its original context (generation recomputes there,
  // GreedyTokensEqualTransformersGenerate covers it): cached decoding stays within one regime.
  const int64_t len = m.rope_switch_length() > 0 ? m.rope_switch_length() : 30;
  at::Tensor ids = at::randint(0, m.config().vocab_size, {1, len}, at::TensorOptions().dtype(at::kLong));
  at::Tensor full = m.forward(ids);
  KVCache cache = m.make_cache(1, len);
  ForwardOptions opts;
  opts.cache = &cache;
  std::vector<at::Tensor> pieces{m.forward(ids.narrow(1, 0, len * 2 / 5), opts)};
  for (int64_t t = len * 2 / 5; t < len; t += (t < len * 2 / 3 ? 1 : 5)) {  // single tokens, then chunks
    int64_t n = std::min<int64_t>(t < len * 2 / 3 ? 1 : 5, len - t);
    pieces.push_back(m.forward(ids.narrow(1, t, n), opts));
  }
  at::Tensor cached = at::cat(pieces, 1);
  ASSERT_EQ(cached.sizes(), full.sizes());
  EXPECT_LE(testing::max_abs_diff(cached, full), 1e-5 * max_abs(full)) << GetParam();
}

TEST_P(CausalLMFamily, GreedyTokensEqualTransformersGenerate) {
  CausalLM m = CausalLM::load(fixture(GetParam()), c10::kCPU, at::kFloat);
  std::vector<int64_t> prompt{1, 17, 42, 99, 5, 23, 64, 8};
  SamplingParams p;
  p.max_new_tokens = 32;
  auto ours = generate(m, prompt, p).tokens;
  at::Tensor ids = at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  at::Tensor ref = testing::call_python("causal_lm_greedy", {ids},
                                        {{"model_dir", fixture(GetParam()).string()}, {"max_new_tokens", 32}})[0];
  std::vector<int64_t> want(ref.data_ptr<int64_t>(), ref.data_ptr<int64_t>() + ref.numel());
  EXPECT_EQ(ours, want) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CausalLMFamily,
                         ::testing::Values("llama3", "tinyllama", "llama-linear", "mistral", "qwen2", "gemma", "qwen3",
                                           "qwen3-tied", "gemma2", "gemma3", "phi3", "phi4-mini", "gpt2", "smollm2", "llama-yarn",
                                           "llama-dynamic"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(CausalLMConfig, UnknownModelTypeNamesTheSupportedOnes) {
  auto dir = fs::temp_directory_path() / "llmtune-bad-config";
  fs::create_directories(dir);
  std::ifstream in(fixture("llama3") / "config.json");
  auto j = nlohmann::json::parse(in);
  j["model_type"] = "gpt_neox";
  std::ofstream(dir / "config.json") << j.dump();
  try {
    ModelConfig::load(dir);
    FAIL();
  } catch (const ModelLoadError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("gpt_neox"), std::string::npos);
    EXPECT_NE(msg.find("llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, gpt2"), std::string::npos);
    EXPECT_EQ(msg.find('\n'), std::string::npos);
  }
  j["model_type"] = "llama";
  j["num_key_value_heads"] = 3;
  std::ofstream(dir / "config.json") << j.dump();
  EXPECT_THROW(ModelConfig::load(dir), ModelLoadError);
  std::ofstream(dir / "config.json") << "{not json";
  EXPECT_THROW(ModelConfig::load(dir), ModelLoadError);
  fs::remove_all(dir);
}

// Each family's config.json with a required key removed, or with heads that do not divide, is refused
// in one line naming the key (in the family's own spelling).
TEST(CausalLMConfig, BadFamilyConfigsNameTheKey) {
  struct Case {
    std::string fixture, missing, heads_key;
  };
  for (const Case& k : {Case{"qwen3", "num_hidden_layers", "num_key_value_heads"},
                        Case{"gemma2", "intermediate_size", "num_key_value_heads"},
                        Case{"gemma3", "hidden_size", "num_key_value_heads"}, Case{"phi3", "vocab_size", "num_attention_heads"},
                        Case{"gpt2", "n_embd", "n_head"}}) {
    std::ifstream in(fixture(k.fixture) / "config.json");
    const auto good = nlohmann::json::parse(in);
    auto expect_error = [&](const nlohmann::json& j, const std::string& key) {
      try {
        ModelConfig::from_json(j, "config.json");
        ADD_FAILURE() << k.fixture << ": accepted a config with a bad '" << key << "'";
      } catch (const ModelLoadError& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("'" + key + "'"), std::string::npos) << k.fixture << ": " << msg;
        EXPECT_NE(msg.find(key), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      }
    };
    auto j = good;
    j.erase(k.missing);
    expect_error(j, k.missing);
    j = good;
    j[k.heads_key] = 3;  // 4 query heads (hidden 64): neither a multiple of 3 nor divisible
    try {
      ModelConfig::from_json(j, "config.json");
      ADD_FAILURE() << k.fixture << ": accepted " << k.heads_key << " = 3";
    } catch (const ModelLoadError& e) {
      EXPECT_NE(std::string(e.what()).find(k.heads_key == "n_head" ? "num_attention_heads" : k.heads_key), std::string::npos) << e.what();
    }
  }
}

TEST(CausalLMConfig, ReadsBothTransformersSpellings) {
  // transformers 4.x: rope_scaling + top-level rope_theta + torch_dtype.
  nlohmann::json v4 = {{"model_type", "llama"}, {"vocab_size", 100}, {"hidden_size", 64}, {"intermediate_size", 128},
                       {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"rope_theta", 500000.0},
                       {"rope_scaling", {{"type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}},
                       {"torch_dtype", "bfloat16"}, {"eos_token_id", {128001, 128008, 128009}}};
  ModelConfig a = ModelConfig::from_json(v4, "config.json");
  EXPECT_EQ(a.rope.type, "llama3");
  EXPECT_DOUBLE_EQ(a.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(a.rope.factor, 32.0);
  EXPECT_EQ(a.torch_dtype, "bfloat16");
  EXPECT_EQ(a.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(a.n_heads_kv, 4);
  EXPECT_EQ(a.head_dim, 16);
  // transformers 5.x: rope_parameters + dtype.
  nlohmann::json v5 = v4;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5.erase("torch_dtype");
  v5["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 1e6}};
  v5["dtype"] = "float16";
  ModelConfig b = ModelConfig::from_json(v5, "config.json");
  EXPECT_EQ(b.rope.type, "linear");
  EXPECT_DOUBLE_EQ(b.rope.theta, 1e6);
  EXPECT_EQ(b.torch_dtype, "float16");
  v5["rope_parameters"] = {{"rope_type", "ntk-by-parts"}, {"factor", 2.0}};  // not a transformers type
  EXPECT_THROW(ModelConfig::from_json(v5, "config.json"), ModelLoadError);
}

}  // namespace
}  // namespace llmtune::model
