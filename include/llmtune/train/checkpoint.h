// Training checkpoints: <run>/checkpoints/step-N/ with the trainable tensors, the optimizer
// moments, the RNG state and a state.json (step, data position, counters). Each step directory
// appears all at once (written in a staging directory and renamed), so an interrupted write never
// leaves a half checkpoint; the last K are kept.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::train {

using TensorList = std::vector<std::pair<std::string, at::Tensor>>;

struct CheckpointContents {
  TensorList trainable;  // exact (fp32) trainable tensors by name
  TensorList optimizer;  // AdamW::state()
  at::Tensor rng_state;  // the default CPU generator's state (uint8)
  // The default generator of each accelerator the run draws on ("cuda:0" → its state): LoRA
  // dropout and init draw there, so a lossless resume restores them too.
  TensorList device_rng_states;
  nlohmann::json state;  // step, data position, counters: whatever the loop needs to continue
};

// Writes checkpoints_dir/step-<step>; `write_extra` may add files to the staging directory (e.g.
// the adapter in PEFT format, so a checkpoint is usable as an adapter). Then removes all but the
// newest `keep_last` step directories (keep_last <= 0: keep all). Returns the directory written.
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints_dir, int64_t step,
                                      const CheckpointContents& contents,
                                      const std::function<void(const std::filesystem::path&)>& write_extra,
                                      int64_t keep_last);

// The newest complete step-N directory, or nullopt when there is none.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& checkpoints_dir);

// The state.json of a step directory alone (no tensors); CheckpointError when missing or malformed.
nlohmann::json read_checkpoint_state(const std::filesystem::path& dir);

// Reads a step directory written by save_checkpoint; CheckpointError naming the file when it is
// incomplete or malformed.
CheckpointContents load_checkpoint(const std::filesystem::path& dir);

// Removes what a killed process left behind: staging directories (.step-N.tmp-*) and checkpoints
// it was pruning (.step-N.old-*); returns how many.
int remove_stale_staging(const std::filesystem::path& checkpoints_dir);

}  // namespace llmtune::train
