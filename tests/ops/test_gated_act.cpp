// gated_activation against the autograd graph of act(gate) * up: the same forward and gradients,
// bit for bit, for silu and tanh-GELU in fp32 and bf16, with only one input requiring a gradient,
// and as the plain product without autograd.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "llmtune/ops/gated_act.h"

namespace llmtune::ops {
namespace {

at::Tensor reference(const at::Tensor& gate, const at::Tensor& up, GateActivation act) {
  return (act == GateActivation::Silu ? at::silu(gate) : at::gelu(gate, "tanh")) * up;
}

TEST(GatedActivation, EqualsAutogradOfTheProductBitForBit) {
  at::manual_seed(7);
  for (auto act : {GateActivation::Silu, GateActivation::GeluTanh}) {
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      for (int needs : {3, 1, 2}) {  // both, gate only, up only
        const at::Tensor g0 = (at::randn({3, 5, 96}) * 3).to(dtype), u0 = at::randn({3, 5, 96}).to(dtype);
        const at::Tensor dy = at::randn({3, 5, 96}).to(dtype);
        auto run = [&](bool fused) {
          at::Tensor g = g0.clone().requires_grad_((needs & 1) != 0), u = u0.clone().requires_grad_((needs & 2) != 0);
          at::Tensor y = fused ? gated_activation(g, u, act) : reference(g, u, act);
          y.backward(dy);
          return std::make_tuple(y.detach(), g.grad(), u.grad());
        };
        const auto [y1, dg1, du1] = run(true);
        const auto [y2, dg2, du2] = run(false);
        const std::string label = std::string(act == GateActivation::Silu ? "silu " : "gelu ") + c10::toString(dtype) +
                                  " needs " + std::to_string(needs);
        EXPECT_TRUE(at::equal(y1, y2)) << label;
        ASSERT_EQ(dg1.defined(), dg2.defined()) << label;
        ASSERT_EQ(du1.defined(), du2.defined()) << label;
        if (dg1.defined()) {
          EXPECT_TRUE(at::equal(dg1, dg2)) << label;
        }
        if (du1.defined()) {
          EXPECT_TRUE(at::equal(du1, du2)) << label;
        }
      }
    }
  }
}

TEST(GatedActivation, WithoutAutogradIsThePlainProduct) {
  const at::Tensor g = at::randn({4, 32}), u = at::randn({4, 32});
  at::NoGradGuard no_grad;
  const at::Tensor y = gated_activation(g.clone().requires_grad_(true), u, GateActivation::Silu);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_TRUE(at::equal(y, reference(g, u, GateActivation::Silu)));
}

}  // namespace
}  // namespace llmtune::ops
