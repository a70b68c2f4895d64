// Dynamic loss scaling for fp16 training (torch.amp.GradScaler's policy): the loss is multiplied by
// a large scale before backward so small fp16 gradients do not flush to zero; before the update the
// gradients are divided back and checked, a step with an inf/nan gradient is skipped and the scale
// halved, and after `growth_interval` clean steps the scale doubles. Off (scale 1) for bf16/fp32.
// The scale never drops below a floor of 1, and an overflow at the floor means training diverged
// (DeepSpeed's rule: min_loss_scale 1, raise_error_at_min_scale). torch's GradScaler has no floor and
// skips for ever on a loss that is NaN for good; at 1 the loss is no longer scaled up, so inf/nan
// gradients are the model's own, and skipping more steps cannot help. From the initial scale, a loss
// that is NaN for good stops at the 17th step (16 skipped, halving 65536 to 1, then one more overflow).
#pragma once

#include <cstdint>
#include <vector>

#include "llmtune/train/optimizer.h"

namespace llmtune::train {

class LossScaler {
 public:
  explicit LossScaler(bool enabled, double initial_scale = 65536.0, int64_t growth_interval = 2000,
                      double min_scale = 1.0);

  bool enabled() const { return enabled_; }
  double scale() const { return scale_; }
  int64_t good_steps() const { return good_steps_; }
  // Resume: the scale and the clean-step count saved with a checkpoint.
  void restore(double scale, int64_t good_steps);

  // Divides every gradient by the scale; false when any is inf or nan (skip the update). One host
  // sync. Always true when disabled.
  bool unscale_and_check(const std::vector<NamedParameter>& params);
  // Whether a step with this outcome (overflow: unscale_and_check was false) ends training: an
  // overflow with the scale already at its floor. Asked before update(). Never when disabled.
  bool diverged(bool overflow) const { return enabled_ && overflow && scale_ <= min_scale_; }
  // After a step: halve on overflow (not below the floor), double after growth_interval clean steps
  // in a row.
  void update(bool overflow);

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_;
  double min_scale_;
  int64_t good_steps_ = 0;
};

}  // namespace llmtune::train
