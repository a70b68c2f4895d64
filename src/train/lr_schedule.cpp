// LR schedules: transformers' lambdas, written out.
#include "llmtune/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "llmtune/util/error.h"

namespace llmtune::train {

Schedule parse_schedule(std::string_view name) {
  if (name == "constant") return Schedule::Constant;
  if (name == "linear") return Schedule::Linear;
  if (name == "cosine") return Schedule::Cosine;
  throw ConfigError("unknown LR schedule '" + std::string(name) + "' (use constant, linear or cosine)");
}

double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  if (step < warmup_steps) return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  const double after_warmup = static_cast<double>(step - warmup_steps);
  const double decay_steps = static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  switch (schedule) {
    case Schedule::Constant:
      return 1.0;
    case Schedule::Linear:
      return std::max(0.0, static_cast<double>(total_steps - step) / decay_steps);
    case Schedule::Cosine: {
      // One half cosine period over the decay steps (num_cycles = 0.5).
      const double progress = after_warmup / decay_steps;
      return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
    }
  }
  return 1.0;
}

}  // namespace llmtune::train
