// Learning-rate schedules with linear warmup, as transformers' get_{constant,linear,cosine}_
// schedule_with_warmup define them (the multiplier of the base LR at each optimizer step).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace llmtune::train {

enum class Schedule { Constant, Linear, Cosine };

// "constant" | "linear" | "cosine"; anything else is a ConfigError listing the three.
Schedule parse_schedule(std::string_view name);

// The factor applied to the base LR at `step` (0-based optimizer steps, as a PyTorch LambdaLR
// sees them) for a run of `total_steps` with `warmup_steps` of linear warmup.
double lr_multiplier(Schedule schedule, int64_t step, int64_t warmup_steps, int64_t total_steps);

}  // namespace llmtune::train
