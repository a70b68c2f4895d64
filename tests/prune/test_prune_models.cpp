// Pruning whole fixture models of every family against the Python references (tests/interop/
// reference.py: transformers run layer by layer on the same calibration ids): Wanda and magnitude
// masks identical except at exact score ties, SparseGPT weights within 1e-4; and the written
// directory loads in transformers with the logits llmtune computes on it.
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cctype>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/prune.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

struct Case {
  std::string family, method;
  SparsityTarget target;
  std::string scope = "row";
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  std::string name = c.family + "_" + c.method + "_" + (c.target.is_nm() ? std::to_string(c.target.n) + "of" + std::to_string(c.target.m)
                                                                      : std::to_string(int(c.target.sparsity * 100)));
  for (char& ch : name)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name + (c.scope == "layer" ? "_layer" : "");
}

// Our mask may differ from the reference's only where the reference's scores tie (to 1e-4) at
// the boundary of a comparison group: the k-th and (k+1)-th lowest of a row, layer or N:M group.
void expect_same_mask_except_ties(const at::Tensor& ours, const at::Tensor& ref, const at::Tensor& scores, const Case& c,
                                  const std::string& what) {
  const at::Tensor ours_mask = ours == 0, ref_mask = ref == 0;
  const int64_t rows = scores.size(0), cols = scores.size(1);
  const int64_t group = c.target.is_nm() ? c.target.m : c.scope == "layer" ? rows * cols : cols;
  const int64_t k = c.target.is_nm() ? c.target.m - c.target.n : static_cast<int64_t>(group * c.target.sparsity);
  const at::Tensor s = scores.reshape({-1, group}), differ = (ours_mask != ref_mask).reshape({-1, group}).any(1);
  const at::Tensor sorted = std::get<0>(s.sort(-1));
  int64_t mismatched_groups = 0;
  for (int64_t g = 0; g < s.size(0); ++g) {
    if (!differ[g].item<bool>()) continue;
    ++mismatched_groups;
    ASSERT_TRUE(k > 0 && k < group) << what;
    const double lo = sorted[g][k - 1].item<double>(), hi = sorted[g][k].item<double>();
    EXPECT_LE(hi - lo, 1e-4 * std::abs(hi)) << what << ": group " << g << " differs without a tie (" << lo << " vs " << hi << ")";
  }
  EXPECT_LE(mismatched_groups, std::max<int64_t>(1, s.size(0) / 100)) << what;
  // Where both keep a weight, it is the original (magnitude and wanda only mask).
  EXPECT_TRUE(at::equal(ours.masked_fill(ours_mask | ref_mask, 0), ref.masked_fill(ours_mask | ref_mask, 0))) << what;
}

class PruneFamily : public ::testing::TestWithParam<Case> {};

TEST_P(PruneFamily, EqualsTheReference) {
  const Case& c = GetParam();
  model::CausalLM m = model::CausalLM::load(fixture(c.family), c10::kCPU, at::kFloat);
  at::manual_seed(11);
  const at::Tensor ids = at::randint(3, m.config().vocab_size, {6, 24}, at::TensorOptions().dtype(at::kLong));
  std::string modules;
  for (const auto& l : m.family().linears) modules += (modules.empty() ? "" : ",") + l.name;
  // Two sequences per forward call: the statistics add up across calls.
  PruneSpec spec{.method = c.method, .target = c.target, .scope = c.scope, .tokens_per_forward = 48};
  const auto pruned = prune_model(m, spec, ids);
  ASSERT_EQ(pruned.size(), m.layers().size() * m.family().linears.size());
  const auto ref = testing::call_python("prune_reference", {ids},
                                        {{"model_dir", fixture(c.family).string()}, {"method", c.method}, {"modules", modules},
                                         {"sparsity", c.target.sparsity}, {"n", c.target.n}, {"m", c.target.m}, {"scope", c.scope}});
  ASSERT_EQ(ref.size(), 2 * pruned.size());
  for (size_t i = 0; i < pruned.size(); ++i) {
    const at::Tensor ours = m.linear(pruned[i].path)->dense_weight();
    const at::Tensor& want = ref[2 * i];
    ASSERT_EQ(ours.sizes(), want.sizes()) << pruned[i].path;
    const int64_t rows = ours.size(0), cols = ours.size(1);
    // Targets: exact per row (per layer for scope=layer; per layer for sparsegpt at 50% with an
    // even row count), and N:M groups with at least M-N zeros.
    if (c.target.is_nm()) {
      EXPECT_TRUE(((ours == 0).reshape({rows, cols / c.target.m, c.target.m}).sum(-1) >= c.target.m - c.target.n).all().item<bool>())
          << pruned[i].path;
    } else if (c.method == "sparsegpt" || c.scope == "layer") {
      EXPECT_GE(pruned[i].zeros_after, static_cast<int64_t>(rows * cols * c.target.sparsity)) << pruned[i].path;
      EXPECT_LE(pruned[i].zeros_after, static_cast<int64_t>(rows * cols * c.target.sparsity) + cols / 128 + 1) << pruned[i].path;
    } else {
      EXPECT_TRUE(((ours == 0).sum(1) == static_cast<int64_t>(cols * c.target.sparsity)).all().item<bool>()) << pruned[i].path;
    }
    if (c.method == "sparsegpt") {
      EXPECT_LE(testing::max_abs_diff(ours, want), 1e-4 * want.abs().max().item<double>()) << pruned[i].path;
    } else {
      expect_same_mask_except_ties(ours, want, ref[2 * i + 1], c, pruned[i].path);
    }
  }
}

const SparsityTarget kHalf{.sparsity = 0.5};
const SparsityTarget k24{.sparsity = 0.5, .n = 2, .m = 4};
const SparsityTarget k48{.sparsity = 0.5, .n = 4, .m = 8};

INSTANTIATE_TEST_SUITE_P(
    Families, PruneFamily,
    ::testing::Values(Case{"llama3", "wanda", kHalf}, Case{"mistral", "wanda", kHalf}, Case{"qwen2", "wanda", kHalf},
                      Case{"gemma", "wanda", kHalf}, Case{"tinyllama", "wanda", {.sparsity = 0.3}},
                      Case{"llama3", "wanda", k24}, Case{"qwen2", "wanda", k48},
                      Case{"llama3", "magnitude", kHalf}, Case{"gemma", "magnitude", k24},
                      Case{"qwen2", "magnitude", {.sparsity = 0.6}, "layer"},
                      Case{"llama3", "sparsegpt", kHalf}, Case{"mistral", "sparsegpt", kHalf}, Case{"qwen2", "sparsegpt", k24},
                      Case{"gemma", "sparsegpt", kHalf}),
    case_name);

class PruneOutput : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmtune-prune-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream out(dir_ / "calib.txt");
    for (int i = 0; i < 30; ++i) out << "The cat sat on mat " << i << ", and then it rained all day long.\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(PruneOutput, LoadsInTransformersWithOurLogits) {
  for (const std::string family : {"llama3", "qwen2"}) {
    PruneParams p;
    p.model = fixture(family).string();
    p.output = dir_ / ("out-" + family);
    p.method = "wanda";
    p.calibration = (dir_ / "calib.txt").string();
    p.calibration_samples = 4;
    p.seq_len = 16;
    p.device = "cpu";
    const PruneReport r = run_prune(p);
    ASSERT_TRUE(fs::exists(p.output / "prune_report.json")) << family;
    ASSERT_TRUE(fs::exists(p.output / "config.json")) << family;
    ASSERT_TRUE(fs::exists(p.output / "generation_config.json")) << family;
    EXPECT_LT(r.nonzero_after, r.nonzero_before);
    const auto report = nlohmann::json::parse(std::ifstream(p.output / "prune_report.json"));
    EXPECT_EQ(report["method"], "wanda");
    EXPECT_EQ(report["calibration"]["sequences"], 4);
    EXPECT_EQ(report["modules"].size(), r.modules.size());

    model::CausalLM m = model::CausalLM::load(p.output, c10::kCPU, at::kFloat);
    for (const auto& mod : r.modules)
      EXPECT_EQ((m.linear(mod.path)->dense_weight() == 0).sum().item<int64_t>(), mod.zeros_after) << mod.path;
    at::manual_seed(12);
    const at::Tensor ids = at::randint(0, m.config().vocab_size, {2, 20}, at::TensorOptions().dtype(at::kLong));
    const at::Tensor ours = m.forward(ids);
    const at::Tensor ref = testing::call_python("causal_lm_logits", {ids}, {{"model_dir", p.output.string()}})[0];
    EXPECT_LE(testing::max_abs_diff(ours, ref), 1e-4 * ref.abs().max().item<double>()) << family;
  }
}

}  // namespace
}  // namespace llmtune::pipelines
