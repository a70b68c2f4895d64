// The pruning functions on their own: masks reach their targets exactly (per row, per layer, N:M
// groups), SparseGPT's reconstruction equals the Python reference of the OBS update on the same
// weight and Hessian, and calibration windows come from the tokenized text as documented.
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "llmtune/model/calibration.h"
#include "llmtune/pipelines/calibration.h"
#include "llmtune/pipelines/prune_methods.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;

TEST(PruneMasks, RowTargetIsExactAndLowestScoresGo) {
  at::manual_seed(1);
  at::Tensor scores = at::randn({16, 40}).abs();
  for (double s : {0.0, 0.25, 0.5, 0.7, 0.99}) {
    at::Tensor mask = mask_lowest_per_row(scores, {.sparsity = s});
    const auto k = static_cast<int64_t>(40 * s);
    EXPECT_TRUE(at::equal(mask.sum(1), at::full({16}, k, at::kLong))) << s;
    if (k == 0 || k == 40) continue;
    // Every pruned score is below every kept one in its row.
    at::Tensor pruned_max = scores.masked_fill(~mask, -1).amax(1), kept_min = scores.masked_fill(mask, 1e9).amin(1);
    EXPECT_TRUE((pruned_max < kept_min).all().item<bool>()) << s;
  }
}

TEST(PruneMasks, LayerTargetIsExact) {
  at::manual_seed(2);
  at::Tensor scores = at::randn({12, 30}).abs();
  at::Tensor mask = mask_lowest_per_tensor(scores, 0.3);
  EXPECT_EQ(mask.sum().item<int64_t>(), static_cast<int64_t>(360 * 0.3));
  EXPECT_LT(scores.masked_fill(~mask, -1).max().item<float>(), scores.masked_fill(mask, 1e9).min().item<float>());
}

TEST(PruneMasks, NMGroupsKeepN) {
  at::manual_seed(3);
  at::Tensor scores = at::randn({8, 64}).abs();
  for (auto [n, m] : {std::pair<int64_t, int64_t>{2, 4}, {4, 8}, {1, 4}}) {
    at::Tensor mask = mask_lowest_per_row(scores, {.sparsity = 1.0 - double(n) / m, .n = n, .m = m});
    at::Tensor per_group = mask.reshape({8, 64 / m, m}).sum(-1);
    EXPECT_TRUE((per_group == m - n).all().item<bool>()) << n << ":" << m;
  }
}

TEST(PruneMasks, PatternParsing) {
  auto t = parse_nm_pattern("2:4", "pattern");
  EXPECT_EQ(t.n, 2);
  EXPECT_EQ(t.m, 4);
  EXPECT_DOUBLE_EQ(t.sparsity, 0.5);
  for (const char* bad : {"4:2", "2:2", "0:4", "x:4", "2-4", "2:", ":4", "2:4:8", " 2:4"})
    EXPECT_THROW(parse_nm_pattern(bad, "pattern"), ConfigError) << bad;
}

// A Hessian as SparseGPT builds it from inputs X (tokens, in), with one input channel always zero.
at::Tensor hessian_of_inputs(int64_t tokens, int64_t in, int64_t dead) {
  at::Tensor x = at::randn({tokens, in}) * (at::arange(in, at::kFloat) / in + 0.5);
  x.select(1, dead).zero_();
  return (x.t().matmul(x)) * (2.0 / 4);
}

TEST(SparseGpt, EqualsTheOBSReferenceUnstructuredAndNM) {
  at::manual_seed(4);
  // 300 columns: two full blocks of 128 and a partial one; column 7's inputs are all zero.
  const int64_t out = 24, in = 304;
  at::Tensor w = at::randn({out, in});
  at::Tensor h = hessian_of_inputs(1024, in, 7);
  for (const SparsityTarget& target : {SparsityTarget{.sparsity = 0.5}, SparsityTarget{.sparsity = 0.3},
                                       SparsityTarget{.sparsity = 0.5, .n = 2, .m = 4}, SparsityTarget{.sparsity = 0.5, .n = 4, .m = 8}}) {
    at::Tensor ours = sparsegpt_prune(w, h, target);
    at::Tensor ref = testing::call_python("sparsegpt_reference", {w, h},
                                          {{"sparsity", target.sparsity}, {"n", target.n}, {"m", target.m}})[0];
    EXPECT_LE(testing::max_abs_diff(ours, ref), 1e-4 * ref.abs().max().item<double>()) << target.describe();
    EXPECT_TRUE(at::equal(ours == 0, ref == 0)) << target.describe();
    EXPECT_TRUE((ours.select(1, 7) == 0).all().item<bool>());
    if (target.is_nm()) {
      at::Tensor zeros = (ours == 0).reshape({out, in / target.m, target.m}).sum(-1);
      EXPECT_TRUE((zeros >= target.m - target.n).all().item<bool>()) << target.describe();
    }
    // The weights kept are updated (OBS), not only masked.
    EXPECT_GT(testing::max_abs_diff(ours.masked_fill(ours == 0, 0), w.masked_fill(ours == 0, 0)), 1e-3);
  }
}

TEST(Calibration, RandomWindowsOfTheTokenizedText) {
  const fs::path dir = fs::temp_directory_path() / ("llmtune-calib-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto tok = tokenizer::load_tokenizer(fs::path(LLMTUNE_FIXTURES_DIR) / "models" / "llama3");
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The quick brown fox " + std::to_string(i) + " jumps over the lazy dog. ";
  { std::ofstream(dir / "c.txt") << text; }
  { std::ofstream(dir / "c.jsonl") << "{\"text\": \"" << text.substr(0, text.size() / 2) << "\"}\n{\"text\": \""
                                   << text.substr(text.size() / 2) << "\"}\n"; }
  const std::vector<int32_t> stream = tok->encode(text, true);
  CalibrationSet set = read_calibration({.path = dir / "c.txt", .samples = 6, .seq_len = 16, .seed = 3}, *tok);
  ASSERT_EQ(set.ids.sizes(), (at::IntArrayRef{6, 16}));
  EXPECT_EQ(set.corpus_tokens, static_cast<int64_t>(stream.size()));
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t t = 0; t < 16; ++t)
      EXPECT_EQ(set.ids[i][t].item<int64_t>(), stream[static_cast<size_t>(set.starts[i] + t)]);
  // Same seed, same windows; another seed, others.
  EXPECT_TRUE(at::equal(set.ids, read_calibration({.path = dir / "c.txt", .samples = 6, .seq_len = 16, .seed = 3}, *tok).ids));
  EXPECT_FALSE(at::equal(set.ids, read_calibration({.path = dir / "c.txt", .samples = 6, .seq_len = 16, .seed = 4}, *tok).ids));
  // JSONL rows: each text encoded with its special tokens, concatenated.
  CalibrationSet rows = read_calibration({.path = dir / "c.jsonl", .samples = 2, .seq_len = 8}, *tok);
  EXPECT_EQ(rows.rows, 2);
  EXPECT_EQ(rows.corpus_tokens, static_cast<int64_t>(tok->encode(text.substr(0, text.size() / 2), true).size() +
                                                     tok->encode(text.substr(text.size() / 2), true).size()));
  // Shorter than one sequence: a DataError naming the file.
  try {
    read_calibration({.path = dir / "c.txt", .samples = 1, .seq_len = static_cast<int64_t>(stream.size()) + 1}, *tok);
    ADD_FAILURE() << "no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("c.txt"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("shorter than one calibration sequence"), std::string::npos);
  }
  fs::remove_all(dir);
}

TEST(Calibration, RecordingLinearStatistics) {
  at::manual_seed(5);
  auto inner = std::make_shared<model::DenseLinear>(at::randn({3, 5}));
  model::RecordingLinear rec(inner, {.sq_norms = true, .hessian = true});
  at::Tensor a = at::randn({2, 4, 5}), b = at::randn({3, 4, 5});
  EXPECT_TRUE(at::allclose(rec.forward(a), inner->forward(a)));
  rec.forward(b);
  at::Tensor x = at::cat({a.reshape({-1, 5}), b.reshape({-1, 5})});
  EXPECT_TRUE(at::allclose(rec.sq_norms(), (x * x).sum(0)));
  EXPECT_TRUE(at::allclose(rec.hessian(), x.t().matmul(x) * (2.0 / 5)));
  EXPECT_EQ(rec.sequences(), 5);
  EXPECT_EQ(rec.tokens(), 20);
}

// Wide inputs: XᵀX made block by block above the diagonal, then mirrored, is the whole product.
TEST(Calibration, BlockedGramIsTheWholeProduct) {
  at::manual_seed(6);
  for (const int64_t n : {1024, 1100, 1536}) {
    const at::Tensor a = at::randn({64, n}), b = at::randn({40, n});
    at::Tensor xtx = at::zeros({n, n});
    model::accumulate_gram(xtx, a);
    model::accumulate_gram(xtx, b);
    const at::Tensor x = at::cat({a, b});
    EXPECT_TRUE(at::allclose(model::symmetric_gram(xtx), x.t().matmul(x), 1e-4, 1e-3)) << n;
  }
}

// Linears fed the same tensor (q/k/v) share one accumulation; a different input (o_proj's) gets its
// own; a recorder fed one tensor twice counts it twice.
TEST(Calibration, RecordersOfOneInputShareTheirStatistics) {
  at::manual_seed(7);
  auto shared = std::make_shared<model::SharedInputs>();
  auto lin = [] { return std::make_shared<model::DenseLinear>(at::randn({3, 6})); };
  model::RecordingLinear q(lin(), {.sq_norms = true, .hessian = true}, shared), k(lin(), {.sq_norms = true, .hessian = true}, shared),
      o(lin(), {.sq_norms = true, .hessian = true}, shared);
  const at::Tensor x1 = at::randn({2, 4, 6}), x2 = at::randn({1, 4, 6}), y1 = at::randn({2, 4, 6}), y2 = at::randn({1, 4, 6});
  for (const auto& [x, y] : {std::pair{x1, y1}, std::pair{x2, y2}}) {
    q.forward(x);
    EXPECT_TRUE(at::allclose(k.forward(x), k.inner()->forward(x)));
    o.forward(y);
  }
  const at::Tensor x = at::cat({x1.reshape({-1, 6}), x2.reshape({-1, 6})}), y = at::cat({y1.reshape({-1, 6}), y2.reshape({-1, 6})});
  for (const auto* r : {&q, &k}) {
    EXPECT_TRUE(at::allclose(r->hessian(), x.t().matmul(x) * (2.0 / 3)));
    EXPECT_TRUE(at::allclose(r->sq_norms(), (x * x).sum(0)));
    EXPECT_EQ(r->sequences(), 3);
  }
  EXPECT_TRUE(at::allclose(o.hessian(), y.t().matmul(y) * (2.0 / 3)));
  model::RecordingLinear twice(lin(), {.sq_norms = true, .hessian = false});
  twice.forward(x1);
  twice.forward(x1);
  EXPECT_TRUE(at::allclose(twice.sq_norms(), 2 * (x1 * x1).sum({0, 1})));
  EXPECT_EQ(twice.sequences(), 4);
}

}  // namespace
}  // namespace llmtune::pipelines
