// GPTQ and RTN against an independent Python reference written from the published algorithm
// (tests/interop/gptq_reference.py), on the same weight and Hessian: codes, scales and zero points
// for symmetric and asymmetric quantizers, groups of 32 / 128 / whole rows, act-order on and off.
// Codes may differ only where a value lies within float rounding of a rounding boundary: counted
// and bounded.
#include <ATen/ops/arange.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include "llmtune/quant/gptq.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

// 2/n·XᵀX of random inputs with growing per-column scale; column `dead` always zero.
at::Tensor hessian_of_inputs(int64_t tokens, int64_t in, int64_t dead) {
  at::Tensor x = at::randn({tokens, in}) * (at::arange(in, at::kFloat) / in + 0.5);
  x.select(1, dead).zero_();
  return x.t().matmul(x) * (2.0 / static_cast<double>(tokens));
}

struct Case {
  int64_t bits, group;
  bool sym, act_order;
};

TEST(Gptq, EqualsThePublishedAlgorithm) {
  at::manual_seed(11);
  // 288 columns: two full blocks of 128 and a partial one; column 5's inputs are all zero.
  const int64_t out = 20, in = 288;
  const at::Tensor w = at::randn({out, in});
  const at::Tensor h = hessian_of_inputs(2048, in, 5);
  for (const Case c : {Case{4, 128, true, false}, Case{4, 128, false, false}, Case{4, 32, true, false}, Case{4, 32, false, true},
                       Case{4, 128, true, true}, Case{4, -1, false, false}, Case{4, -1, true, true}, Case{3, 32, false, false},
                       Case{8, 32, true, false}, Case{2, 128, false, true}}) {
    const std::string what = "bits " + std::to_string(c.bits) + " group " + std::to_string(c.group) + (c.sym ? " sym" : " asym") +
                             (c.act_order ? " act-order" : "");
    GptqOptions o{.quant = {.bits = c.bits, .group_size = c.group, .sym = c.sym}, .act_order = c.act_order};
    const GroupQuantized ours = gptq_quantize(w, h, o);
    const auto ref = testing::call_python("gptq_reference", {w, h},
                                          {{"bits", c.bits}, {"group_size", c.group}, {"sym", c.sym}, {"act_order", c.act_order}});
    ASSERT_EQ(ours.codes.sizes(), ref[0].sizes()) << what;
    const int64_t differ = (ours.codes != ref[0]).sum().item<int64_t>();
    // A code that differs is one step away (a value at a rounding boundary), and rare.
    EXPECT_LE(differ, ours.codes.numel() / 1000) << what << ": " << differ << " codes differ";
    EXPECT_LE((ours.codes.to(at::kLong) - ref[0]).abs().max().item<int64_t>(), differ > 0 ? 1 : 0) << what;
    EXPECT_LE(testing::max_abs_diff(ours.scales, ref[1]), 1e-6 * ref[1].abs().max().item<double>()) << what;
    EXPECT_LE((ours.zeros - ref[2]).abs().max().item<int64_t>(), 0) << what;
    // Codes span the range and the result is GPTQ's, not round-to-nearest's.
    EXPECT_EQ(ours.codes.max().item<int64_t>(), (int64_t{1} << c.bits) - 1) << what;
    const GroupQuantized rtn = rtn_quantize(w, o.quant);
    EXPECT_GT((rtn.codes != ours.codes).sum().item<int64_t>(), 0) << what;
  }
}

TEST(Gptq, LowersTheLayerOutputErrorAgainstRoundToNearest) {
  at::manual_seed(12);
  const int64_t out = 32, in = 256, tokens = 1024;
  // Correlated inputs (a rank-48 mix plus noise), as a layer's activations are: what GPTQ exploits.
  const at::Tensor x = at::randn({tokens, 48}).matmul(at::randn({48, in})) + 0.1 * at::randn({tokens, in});
  const at::Tensor w = at::randn({out, in});
  const at::Tensor h = x.t().matmul(x) * (2.0 / tokens);
  GptqOptions o{.quant = {.bits = 4, .group_size = 128, .sym = false}};
  auto err = [&](const at::Tensor& wq) { return (x.matmul(w.t()) - x.matmul(wq.t())).square().sum().item<double>(); };
  const double gptq = err(gptq_quantize(w, h, o).dequantized()), rtn = err(rtn_quantize(w, o.quant).dequantized());
  EXPECT_LT(gptq, rtn) << "GPTQ ‖WX − ŴX‖² " << gptq << " vs RTN " << rtn;
}

TEST(Rtn, EqualsTheReferenceQuantizer) {
  at::manual_seed(13);
  const at::Tensor w = at::randn({16, 96});
  for (const Case c : {Case{4, 32, true, false}, Case{4, 32, false, false}, Case{8, -1, false, false}, Case{3, 32, true, false}}) {
    const GroupQuantized ours = rtn_quantize(w, {.bits = c.bits, .group_size = c.group, .sym = c.sym});
    const auto ref = testing::call_python("rtn_reference", {w}, {{"bits", c.bits}, {"group_size", c.group}, {"sym", c.sym}});
    EXPECT_TRUE(ours.codes.to(ref[0].scalar_type()).equal(ref[0]));
    EXPECT_TRUE(ours.scales.equal(ref[1]));
    EXPECT_TRUE(ours.zeros.equal(ref[2]));
  }
}

TEST(Gptq, RefusesBadBitsAndASingularHessian) {
  const at::Tensor w = at::randn({4, 64});
  EXPECT_THROW(rtn_quantize(w, {.bits = 5}), ConfigError);
  // A Hessian with a negative eigenvalue stays indefinite under small dampening: retried, then refused.
  at::Tensor h = at::eye(64) * -1.0;
  h.select(0, 0).select(0, 0).fill_(10.0);
  EXPECT_THROW(gptq_quantize(w, h, {}, "model.layers.0.mlp.up_proj"), QuantError);
}

}  // namespace
}  // namespace llmtune::quant
