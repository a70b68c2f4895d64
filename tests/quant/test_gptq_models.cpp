// GPTQ over whole fixture models against the Python reference of the published algorithm run on
// transformers layer by layer (tests/interop/gptq_reference.py: the same calibration ids, each
// quantized layer's outputs feeding the next): integer codes identical except where a value lies
// within float rounding of a rounding boundary (counted and bounded), scales and zero points equal,
// for symmetric / asymmetric quantizers, groups of 32 / 128 / whole rows, act-order on and off.
#include <ATen/ops/randint.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/gptq_export.h"
#include "support/interop.h"

namespace llmtune::pipelines {
namespace {

struct Case {
  std::string family;
  int64_t group;
  bool sym, act_order;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  return c.family + "_g" + (c.group < 0 ? std::string("row") : std::to_string(c.group)) + (c.sym ? "_sym" : "_asym") +
         (c.act_order ? "_actorder" : "");
}

class GptqFamily : public ::testing::TestWithParam<Case> {};

TEST_P(GptqFamily, EqualsTheLayerwiseReference) {
  const Case& c = GetParam();
  const auto dir = std::filesystem::path(LLMTUNE_FIXTURES_DIR) / "models" / c.family;
  model::CausalLM m = model::CausalLM::load(dir, c10::kCPU, at::kFloat);
  at::manual_seed(21);
  const at::Tensor ids = at::randint(3, m.config().vocab_size, {6, 24}, at::TensorOptions().dtype(at::kLong));
  std::string modules;
  for (const auto& l : m.family().linears) modules += (modules.empty() ? "" : ",") + l.name;
  GptqExportOptions o;
  o.method = "gptq";
  o.gptq = {.quant = {.bits = 4, .group_size = c.group, .sym = c.sym}, .act_order = c.act_order};
  o.tokens_per_forward = 48;  // two sequences per forward call: the Hessians add up across calls
  GptqExportReport report;
  const auto ours = quantize_model_gptq(m, o, ids, report);
  const auto ref = testing::call_python("gptq_model_reference", {ids},
                                        {{"model_dir", dir.string()}, {"modules", modules}, {"bits", 4}, {"group_size", c.group},
                                         {"sym", c.sym}, {"act_order", c.act_order}});
  ASSERT_EQ(ref.size(), 3 * ours.size());
  int64_t codes = 0, differ = 0;
  for (size_t i = 0; i < ours.size(); ++i) {
    const auto& q = ours[i].q;
    ASSERT_EQ(q.codes.sizes(), ref[3 * i].sizes()) << ours[i].path;
    codes += q.codes.numel();
    differ += (q.codes != ref[3 * i]).sum().item<int64_t>();
    // One step at most: a value within rounding of a boundary went the other way.
    EXPECT_LE((q.codes.to(at::kLong) - ref[3 * i]).abs().max().item<int64_t>(), 1) << ours[i].path;
    EXPECT_LE(testing::max_abs_diff(q.scales, ref[3 * i + 1]), 1e-4 * ref[3 * i + 1].abs().max().item<double>()) << ours[i].path;
    EXPECT_LE((q.zeros - ref[3 * i + 2]).abs().max().item<int64_t>(), 1) << ours[i].path;
  }
  // The two forwards (ours, transformers') agree to float rounding, not bit for bit, so a few codes
  // at a rounding boundary flip; bounded at 0.5% of all codes.
  EXPECT_LE(differ, codes / 200) << differ << " of " << codes << " codes differ";
  RecordProperty("codes_differing", std::to_string(differ) + " of " + std::to_string(codes));
  std::cout << c.family << ": " << differ << " of " << codes << " codes differ\n";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GptqFamily,
                         ::testing::Values(Case{"llama3", 32, true, false}, Case{"llama3", 32, false, true},
                                           Case{"qwen2", -1, false, false}, Case{"qwen2", 32, true, true},
                                           Case{"tinyllama", 128, false, false}, Case{"mistral", 32, false, false}),
                         case_name);

}  // namespace
}  // namespace llmtune::pipelines
