// Structured pruning against the Python reference (tests/interop/reference.py: structured_reference,
// transformers forward hooks on the same calibration ids): Block Influence, angular distance, head
// and channel importance within 1e-4, the same layers/heads/channels chosen; and whole runs whose
// output loads in transformers with llmtune's logits and holds exactly the base's kept slices.
#include <ATen/ops/arange.h>
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/calibration.h"
#include "llmtune/pipelines/prune.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

void expect_close(const std::vector<double>& ours, const at::Tensor& ref, const std::string& what) {
  ASSERT_EQ(static_cast<int64_t>(ours.size()), ref.numel()) << what;
  for (size_t i = 0; i < ours.size(); ++i) {
    const double want = ref[static_cast<int64_t>(i)].item<double>();
    EXPECT_NEAR(ours[i], want, 1e-4 * std::max(1e-3, std::abs(want))) << what << "[" << i << "]";
  }
}

struct WidthCase {
  std::string family;
  int64_t heads, kv_heads, intermediate;  // new counts, all given (the reference takes no defaults)
};

class StructuredScores : public ::testing::TestWithParam<WidthCase> {};

TEST_P(StructuredScores, EqualTheReference) {
  const WidthCase& c = GetParam();
  model::CausalLM m = model::CausalLM::load(fixture(c.family), c10::kCPU, at::kFloat);
  at::manual_seed(21);
  const at::Tensor ids = at::randint(3, m.config().vocab_size, {6, 24}, at::TensorOptions().dtype(at::kLong));
  // Two sequences per forward call: the per-sequence statistics are gathered across calls.
  const LayerScores layers = score_layers(m, ids, 1, 48);
  const WidthScores width = score_width(m, ids, 48);
  const auto ref = testing::call_python("structured_reference", {ids},
                                        {{"model_dir", fixture(c.family).string()}, {"block", 1}, {"heads", c.heads},
                                         {"kv_heads", c.kv_heads}, {"intermediate", c.intermediate}});
  ASSERT_EQ(ref.size(), 9u);
  expect_close(layers.block_influence, ref[0], "block influence");
  expect_close(layers.angular, ref[1], "angular distance");
  EXPECT_LE(testing::max_abs_diff(width.heads, ref[2]), 1e-4 * ref[2].abs().max().item<double>());
  EXPECT_LE(testing::max_abs_diff(width.channels, ref[3]), 1e-4 * ref[3].abs().max().item<double>());
  EXPECT_EQ(layers_to_remove(layers, "bi", 1), to_vector(ref[4]));
  EXPECT_EQ(layers_to_remove(layers, "angular", 1), to_vector(ref[5]));

  const StructuredPlan plan = plan_width(width, m.config(), c.heads, c.kv_heads, c.intermediate);
  EXPECT_EQ(plan.n_heads, c.heads);
  EXPECT_EQ(plan.n_heads_kv, c.kv_heads);
  for (int64_t l = 0; l < m.config().n_layers; ++l) {
    EXPECT_EQ(plan.q_heads[l], to_vector(ref[6][l])) << "layer " << l;
    if (c.kv_heads != m.config().n_heads_kv) EXPECT_EQ(plan.kv_heads[l], to_vector(ref[7][l])) << "layer " << l;
    else EXPECT_TRUE(plan.kv_heads[l].empty());
    EXPECT_EQ(plan.channels[l], to_vector(ref[8][l])) << "layer " << l;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, StructuredScores,
                         ::testing::Values(WidthCase{"llama3", 2, 2, 80}, WidthCase{"mistral", 2, 1, 96},
                                           WidthCase{"qwen2", 2, 1, 64}, WidthCase{"gemma", 3, 1, 100},
                                           WidthCase{"tinyllama", 2, 1, 32}, WidthCase{"llama-linear", 2, 2, 70}),
                         [](const auto& info) {
                           std::string n = info.param.family;
                           for (char& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(StructuredChoices, LayerListsAndHeadCounts) {
  EXPECT_EQ(parse_layer_list("20-23,5", 24, "drop_layers"), (std::vector<int64_t>{5, 20, 21, 22, 23}));
  EXPECT_EQ(parse_layer_list("3,3,1", 4, "drop_layers"), (std::vector<int64_t>{1, 3}));
  EXPECT_THROW(parse_layer_list("24", 24, "drop_layers"), ConfigError);
  EXPECT_THROW(parse_layer_list("3-1", 24, "drop_layers"), ConfigError);
  EXPECT_THROW(parse_layer_list("a,", 24, "drop_layers"), ConfigError);
  EXPECT_THROW(parse_layer_list("", 24, "drop_layers"), ConfigError);
  LayerScores s{.block_influence = {0.5, 0.1, 0.3, 0.1}, .angular = {0.4, 0.2, 0.3}, .block = 2};
  EXPECT_EQ(layers_to_remove(s, "bi", 2), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(layers_to_remove(s, "angular", 2), (std::vector<int64_t>{1, 2}));
  model::ModelConfig c;
  c.n_heads = 32;
  c.n_heads_kv = 8;  // groups of 4
  EXPECT_EQ(resolve_head_counts(c, 16, 0), (std::pair<int64_t, int64_t>{16, 8}));  // 2 of each group
  EXPECT_EQ(resolve_head_counts(c, 0, 4), (std::pair<int64_t, int64_t>{16, 4}));   // whole groups
  EXPECT_EQ(resolve_head_counts(c, 8, 4), (std::pair<int64_t, int64_t>{8, 4}));
  EXPECT_THROW(resolve_head_counts(c, 12, 0), ConfigError);  // 1.5 per group
  EXPECT_THROW(resolve_head_counts(c, 20, 4), ConfigError);  // 5 per group, more than a group holds
  EXPECT_THROW(resolve_head_counts(c, 40, 0), ConfigError);
  EXPECT_THROW(resolve_head_counts(c, 0, 9), ConfigError);
  c.n_heads_kv = 32;  // MHA stays MHA
  EXPECT_EQ(resolve_head_counts(c, 20, 0), (std::pair<int64_t, int64_t>{20, 20}));
}

class StructuredOutput : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmtune-prune-structured-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream out(dir_ / "calib.txt");
    for (int i = 0; i < 30; ++i) out << "The cat sat on mat " << i << ", and then it rained all day long.\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  PruneParams params(const std::string& family, const std::string& method) {
    PruneParams p;
    p.model = fixture(family).string();
    p.output = dir_ / (method + "-" + family);
    p.method = method;
    p.calibration = (dir_ / "calib.txt").string();
    p.calibration_samples = 5;
    p.seq_len = 16;
    p.device = "cpu";
    return p;
  }
  // The calibration ids run_prune drew (same file, count, length and seed).
  at::Tensor calibration_ids(const PruneParams& p) {
    CalibrationParams cp{.path = p.calibration, .samples = p.calibration_samples, .seq_len = p.seq_len, .seed = p.seed};
    return read_calibration(cp, *tokenizer::load_tokenizer(fixture(fs::path(p.model).filename().string()))).ids;
  }
  // transformers loads the output, and its logits equal llmtune's on it.
  void expect_transformers_agrees(const fs::path& out) {
    model::CausalLM m = model::CausalLM::load(out, c10::kCPU, at::kFloat);
    at::manual_seed(12);
    const at::Tensor ids = at::randint(0, m.config().vocab_size, {2, 20}, at::TensorOptions().dtype(at::kLong));
    const at::Tensor ours = m.forward(ids);
    const at::Tensor ref = testing::call_python("causal_lm_logits", {ids}, {{"model_dir", out.string()}})[0];
    EXPECT_LE(testing::max_abs_diff(ours, ref), 1e-4 * ref.abs().max().item<double>()) << out;
  }
  static std::map<std::string, at::Tensor> weights(const fs::path& dir) {
    model::CausalLM m = model::CausalLM::load(dir, c10::kCPU, at::kFloat);
    std::map<std::string, at::Tensor> out;
    for (const auto& [name, t] : m.named_weights()) out[name] = t->clone();
    return out;
  }
  fs::path dir_;
};

at::Tensor rows_of_heads(const at::Tensor& heads, int64_t d) {
  return (heads.unsqueeze(1) * d + at::arange(d, at::TensorOptions().dtype(at::kLong)).unsqueeze(0)).reshape({-1});
}

TEST_F(StructuredOutput, LayersRemovesWhatTheReferenceRanksLowest) {
  for (const std::string family : {"llama3", "qwen2"}) {
    PruneParams p = params(family, "layers");
    p.remove_layers = 1;
    const PruneReport r = run_prune(p);
    const auto ref = testing::call_python("structured_reference", {calibration_ids(p)},
                                          {{"model_dir", p.model}, {"block", 1}});
    ASSERT_TRUE(r.structured);
    EXPECT_EQ(r.structured->removed_layers, to_vector(ref[4])) << family;
    const auto cfg = nlohmann::json::parse(std::ifstream(p.output / "config.json"));
    EXPECT_EQ(cfg["num_hidden_layers"], 1) << family;
    if (cfg.contains("layer_types")) EXPECT_EQ(cfg["layer_types"].size(), 1u) << family;
    // The kept layer, renumbered 0, is the base's layer as it was; everything else is unchanged.
    const int64_t kept = 1 - r.structured->removed_layers[0];
    auto base = weights(p.model), out = weights(p.output);
    for (const auto& [name, t] : out) {
      std::string src = name;
      if (name.starts_with("model.layers.0.")) src = "model.layers." + std::to_string(kept) + name.substr(14);
      ASSERT_TRUE(base.count(src)) << name;
      EXPECT_TRUE(at::equal(t, base[src])) << family << " " << name;
    }
    expect_transformers_agrees(p.output);
  }
}

TEST_F(StructuredOutput, WidthKeepsWhatTheReferenceRanksHighest) {
  for (const WidthCase& c : {WidthCase{"llama-linear", 2, 2, 96}, WidthCase{"qwen2", 2, 1, 64}}) {
    PruneParams p = params(c.family, "width");
    p.num_attention_heads = c.heads;
    p.num_key_value_heads = c.kv_heads;
    p.intermediate_size = c.intermediate;
    run_prune(p);
    const auto ref = testing::call_python("structured_reference", {calibration_ids(p)},
                                          {{"model_dir", p.model}, {"heads", c.heads}, {"kv_heads", c.kv_heads},
                                           {"intermediate", c.intermediate}});
    const auto cfg = nlohmann::json::parse(std::ifstream(p.output / "config.json"));
    EXPECT_EQ(cfg["num_attention_heads"], c.heads);
    EXPECT_EQ(cfg["num_key_value_heads"], c.kv_heads);
    EXPECT_EQ(cfg["intermediate_size"], c.intermediate);
    auto base = weights(p.model), out = weights(p.output);
    const int64_t d = model::ModelConfig::load(p.model).head_dim;
    for (int64_t l = 0; l < 2; ++l) {
      const std::string pre = "model.layers." + std::to_string(l) + ".";
      const at::Tensor q = rows_of_heads(ref[6][l], d), kv = rows_of_heads(ref[7][l], d), ch = ref[8][l];
      auto expect = [&](const std::string& name, int64_t dim, const at::Tensor& index) {
        if (!base.count(pre + name)) return;
        ASSERT_TRUE(out.count(pre + name)) << name;
        EXPECT_TRUE(at::equal(out[pre + name], base[pre + name].index_select(dim, index))) << c.family << " " << pre + name;
      };
      for (const char* s : {".weight", ".bias"}) {
        expect(std::string("self_attn.q_proj") + s, 0, q);
        expect(std::string("self_attn.k_proj") + s, 0, kv);
        expect(std::string("self_attn.v_proj") + s, 0, kv);
        expect(std::string("mlp.gate_proj") + s, 0, ch);
        expect(std::string("mlp.up_proj") + s, 0, ch);
      }
      expect("self_attn.o_proj.weight", 1, q);
      expect("mlp.down_proj.weight", 1, ch);
      for (const char* s : {"self_attn.o_proj.bias", "mlp.down_proj.bias", "input_layernorm.weight"})
        if (base.count(pre + s)) EXPECT_TRUE(at::equal(out[pre + s], base[pre + s])) << pre + s;
    }
    expect_transformers_agrees(p.output);
  }
}

}  // namespace
}  // namespace llmtune::pipelines
