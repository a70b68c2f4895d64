// LR schedules against transformers' get_*_schedule_with_warmup at every step.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "llmtune/train/lr_schedule.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::train {
namespace {

TEST(LrSchedule, EqualsTransformersAtEveryStep) {
  nlohmann::json cases = nlohmann::json::array();
  for (const char* kind : {"constant", "linear", "cosine"})
    for (auto [warmup, total] : {std::pair<int64_t, int64_t>{0, 50}, {10, 50}, {7, 31}, {50, 50}, {1, 2}})
      cases.push_back({kind, warmup, total});
  auto refs = testing::call_python("lr_schedules", {}, {{"cases", cases}});
  ASSERT_EQ(refs.size(), cases.size());
  for (size_t c = 0; c < cases.size(); ++c) {
    std::string kind = cases[c][0];
    int64_t warmup = cases[c][1], total = cases[c][2];
    ASSERT_EQ(refs[c].numel(), total + 1);
    for (int64_t step = 0; step <= total; ++step) {
      EXPECT_NEAR(lr_multiplier(parse_schedule(kind), step, warmup, total), refs[c][step].item<double>(), 1e-12)
          << kind << " warmup " << warmup << " total " << total << " step " << step;
    }
  }
}

TEST(LrSchedule, UnknownNameIsAConfigError) { EXPECT_THROW(parse_schedule("exponential"), ConfigError); }

}  // namespace
}  // namespace llmtune::train
