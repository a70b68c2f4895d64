// AdamW and gradient clipping against torch.optim.AdamW and clip_grad_norm_.
#include <ATen/ops/randn.h>
#include <ATen/ops/stack.h>
#include <gtest/gtest.h>

#include "llmtune/train/optimizer.h"
#include "support/interop.h"

namespace llmtune::train {
namespace {

TEST(AdamW, DecayGroups) {
  EXPECT_TRUE(decays("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_TRUE(decays("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"));
  EXPECT_FALSE(decays("model.layers.0.input_layernorm.weight"));
  EXPECT_FALSE(decays("model.norm.weight"));
  EXPECT_FALSE(decays("model.layers.0.self_attn.q_proj.bias"));
}

TEST(AdamW, EqualsTorchAdamWWithClipping) {
  for (double max_norm : {0.0, 0.5}) {
    at::manual_seed(3);
    at::Tensor pa = at::randn({4, 6}), pb = at::randn({6});
    at::Tensor ga = at::randn({12, 4, 6}), gb = at::randn({12, 6});
    const double lr = 3e-2, beta1 = 0.85, beta2 = 0.99, eps = 1e-6, wd = 0.1;
    std::vector<NamedParameter> params = {{"layer.weight", pa.clone().requires_grad_(true)},
                                          {"layer.bias", pb.clone().requires_grad_(true)}};
    AdamW opt(params, AdamWOptions{.beta1 = beta1, .beta2 = beta2, .eps = eps, .weight_decay = wd});
    std::vector<at::Tensor> oa, ob;
    std::vector<double> norms;
    for (int64_t s = 0; s < ga.size(0); ++s) {
      params[0].tensor.mutable_grad() = ga[s].clone();
      params[1].tensor.mutable_grad() = gb[s].clone();
      norms.push_back(clip_grad_norm(params, max_norm));
      opt.step(lr);
      oa.push_back(params[0].tensor.detach().clone());
      ob.push_back(params[1].tensor.detach().clone());
      opt.zero_grad();
    }
    auto ref = testing::call_python("adamw_steps", {pa, pb, ga, gb},
                                    {{"lr", lr}, {"beta1", beta1}, {"beta2", beta2}, {"eps", eps},
                                     {"weight_decay", wd}, {"max_norm", max_norm}});
    EXPECT_LE(testing::max_abs_diff(at::stack(oa), ref[0]), 1e-6) << "max_norm " << max_norm;
    EXPECT_LE(testing::max_abs_diff(at::stack(ob), ref[1]), 1e-6) << "max_norm " << max_norm;
    for (size_t s = 0; s < norms.size(); ++s) EXPECT_NEAR(norms[s], ref[2][s].item<double>(), 1e-5 * norms[s]);
    EXPECT_EQ(opt.step_count(), 12);
  }
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  at::manual_seed(4);
  at::Tensor p0 = at::randn({5, 3});
  at::Tensor grads = at::randn({6, 5, 3});
  auto run = [&](bool restart_at_3) {
    std::vector<NamedParameter> params = {{"w", p0.clone().requires_grad_(true)}};
    auto opt = std::make_unique<AdamW>(params, AdamWOptions{.weight_decay = 0.01});
    for (int64_t s = 0; s < 6; ++s) {
      if (restart_at_3 && s == 3) {
        auto state = opt->state();
        for (auto& [n, t] : state) t = t.clone();
        int64_t count = opt->step_count();
        opt = std::make_unique<AdamW>(params, AdamWOptions{.weight_decay = 0.01});
        opt->load_state(state, count, "test");
      }
      params[0].tensor.mutable_grad() = grads[s].clone();
      opt->step(1e-2);
    }
    return params[0].tensor.detach().clone();
  };
  EXPECT_TRUE(run(false).equal(run(true)));
}

}  // namespace
}  // namespace llmtune::train
