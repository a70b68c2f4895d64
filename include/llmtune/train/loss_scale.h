// Dynamic loss scaling for fp16 training (torch.amp.GradScaler's policy): the loss is multiplied by
// a large scale before backward so small fp16 gradients do not flush to zero; before the update the
// gradients are divided back and checked, a step with an inf/nan gradient is skipped and the scale
// halved, and after `growth_interval` clean steps the scale doubles. Off (scale 1) for bf16/fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "llmtune/train/optimizer.h"

namespace llmtune::train {

class LossScaler {
 public:
  explicit LossScaler(bool enabled, double initial_scale = 65536.0, int64_t growth_interval = 2000);

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  int64_t good_steps() const { return good_steps_; }
  // Resume: the scale and the clean-step count saved with a checkpoint.
  void restore(double scale, int64_t good_steps);

  // Divides every gradient by the scale; false when any is inf or nan (skip the update). One host
  // sync. Always true when disabled.
  bool unscale_and_check(const std::vector<NamedParameter>& params);
  // After a step: halve on overflow, double after growth_interval clean steps in a row.
  void update(bool overflow);

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_;
  int64_t good_steps_ = 0;
};

}  // namespace llmtune::train
