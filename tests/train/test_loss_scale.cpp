// The fp16 loss scaler: GradScaler's halving and growth, and the floor at which a run whose
// gradients stay inf/nan is declared diverged instead of skipping steps for ever.
#include "llmtune/train/loss_scale.h"

#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <gtest/gtest.h>

#include <limits>

namespace llmtune::train {
namespace {

TEST(LossScaler, HalvesOnOverflowGrowsAfterCleanStepsAndStopsAtItsFloor) {
  LossScaler s(true, 65536.0, 3);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 65536.0);
  s.update(false);
  EXPECT_EQ(s.scale(), 131072.0);  // after growth_interval clean steps
  // Inf/nan for good: every step overflows. Each one halves, until the floor of 1.
  int skipped = 0;
  while (!s.diverged(true)) {
    ASSERT_LT(skipped, 100) << "the scaler never gives up";
    s.update(true);
    ++skipped;
  }
  EXPECT_EQ(s.scale(), 1.0);
  EXPECT_EQ(skipped, 17);  // 2^17 down to 2^0; the next overflow is the divergence
  EXPECT_FALSE(s.diverged(false));  // a clean step at the floor is fine
  s.update(true);
  EXPECT_EQ(s.scale(), 1.0);  // never below the floor
  // From the default start, a loss that is NaN from the first step stops at the 17th.
  LossScaler fresh(true);
  int steps = 1;
  for (; !fresh.diverged(true); ++steps) fresh.update(true);
  EXPECT_EQ(steps, 17);
  // Sporadic overflows above the floor never end a run.
  LossScaler sporadic(true, 4.0, 2000);
  for (int i = 0; i < 1000; ++i) {
    const bool overflow = i % 2 == 0 && sporadic.scale() > 1.0;
    EXPECT_FALSE(sporadic.diverged(overflow));
    sporadic.update(overflow);
  }
}

TEST(LossScaler, DisabledNeverDivergesAndRestoredScalesKeepTheFloor) {
  LossScaler off(false);
  EXPECT_EQ(off.scale(), 1.0);
  EXPECT_FALSE(off.diverged(true));
  LossScaler resumed(true);
  resumed.restore(1.0, 0);  // a checkpoint taken at the floor
  EXPECT_TRUE(resumed.diverged(true));
}

TEST(LossScaler, UnscalesAndReportsNonFiniteGradients) {
  LossScaler s(true, 8.0);
  at::Tensor w = at::ones({3}).requires_grad_(true);
  w.mutable_grad() = at::full({3}, 16.0);
  std::vector<NamedParameter> params{{"w", w}};
  EXPECT_TRUE(s.unscale_and_check(params));
  EXPECT_EQ(w.grad()[0].item<float>(), 2.0f);
  w.mutable_grad() = at::full({3}, std::numeric_limits<float>::infinity());
  EXPECT_FALSE(s.unscale_and_check(params));
  w.mutable_grad() = at::full({3}, std::numeric_limits<float>::quiet_NaN());
  EXPECT_FALSE(s.unscale_and_check(params));
}

}  // namespace
}  // namespace llmtune::train
