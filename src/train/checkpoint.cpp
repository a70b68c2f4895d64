// Checkpoint directories: safetensors for tensors, JSON for the loop state, AtomicDir for
// all-or-nothing appearance, and pruning to the newest K.
#include "llmtune/train/checkpoint.h"

#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <regex>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"

namespace llmtune::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kStateFile = "state.json";

// step-N directories (complete ones: the rename happens after state.json is in place), by N.
std::vector<std::pair<int64_t, fs::path>> step_dirs(const fs::path& checkpoints_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return out;
  static const std::regex name_re("step-([0-9]{1,15})");
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    std::smatch m;
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && std::regex_match(name, m, name_re) && fs::exists(entry.path() / kStateFile))
      out.emplace_back(std::stoll(m[1].str()), entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

TensorList read_all(const fs::path& file) {
  if (!fs::exists(file)) throw CheckpointError(file.string() + ": missing (the checkpoint is incomplete)");
  auto f = io::SafetensorsFile::open(file);
  TensorList out;
  for (const auto& name : f->names()) out.emplace_back(name, f->tensor(name).clone());
  return out;
}

}  // namespace

fs::path save_checkpoint(const fs::path& checkpoints_dir, int64_t step, const CheckpointContents& contents,
                         const std::function<void(const fs::path&)>& write_extra, int64_t keep_last) {
  fs::create_directories(checkpoints_dir);
  const fs::path target = checkpoints_dir / ("step-" + std::to_string(step));
  {
    io::AtomicDir dir(target);
    io::save_safetensors(dir.staging() / "trainable.safetensors", contents.trainable);
    io::save_safetensors(dir.staging() / "optimizer.safetensors", contents.optimizer);
    TensorList rng{{"cpu", contents.rng_state}};
    rng.insert(rng.end(), contents.device_rng_states.begin(), contents.device_rng_states.end());
    io::save_safetensors(dir.staging() / "rng.safetensors", rng);
    if (write_extra) write_extra(dir.staging());
    io::write_file_atomic(dir.staging() / kStateFile, contents.state.dump(2) + "\n");
    dir.commit();
  }
  if (keep_last > 0) {
    auto dirs = step_dirs(checkpoints_dir);
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < dirs.size(); ++i) {
      // Renamed out of the step-N namespace first (one atomic step), then deleted: a process killed
      // while deleting leaves a .step-N.old-* directory that the next run removes, never a step-N
      // with half its files.
      const fs::path& old = dirs[i].second;
      const fs::path doomed = old.parent_path() / ("." + old.filename().string() + ".old-" + std::to_string(::getpid()));
      std::error_code ec;
      fs::rename(old, doomed, ec);
      if (!ec) fs::remove_all(doomed, ec);
      if (ec) spdlog::warn("could not remove old checkpoint {}: {}", old.string(), ec.message());
    }
  }
  return target;
}

std::optional<fs::path> latest_checkpoint(const fs::path& checkpoints_dir) {
  auto dirs = step_dirs(checkpoints_dir);
  if (dirs.empty()) return std::nullopt;
  return dirs.back().second;
}

nlohmann::json read_checkpoint_state(const fs::path& dir) {
  const fs::path state_path = dir / kStateFile;
  if (!fs::exists(state_path))
    throw CheckpointError(state_path.string() + ": cannot read (is " + dir.string() + " a checkpoint directory, checkpoints/step-N?)");
  auto state = io::read_json_file<CheckpointError, nlohmann::json>(state_path, "the checkpoint state");
  if (!state.is_object() || !state.contains("step") || !state["step"].is_number_integer())
    throw CheckpointError(state_path.string() + ": not a checkpoint state (no integer 'step')");
  return state;
}

CheckpointContents load_checkpoint(const fs::path& dir) {
  CheckpointContents c;
  c.state = read_checkpoint_state(dir);
  c.trainable = read_all(dir / "trainable.safetensors");
  c.optimizer = read_all(dir / "optimizer.safetensors");
  for (auto& [name, t] : read_all(dir / "rng.safetensors")) {
    if (name == "cpu") c.rng_state = t;
    else c.device_rng_states.emplace_back(name, t);
  }
  if (!c.rng_state.defined()) throw CheckpointError((dir / "rng.safetensors").string() + ": no 'cpu' generator state");
  return c;
}

int remove_stale_staging(const fs::path& checkpoints_dir) {
  int removed = 0;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return 0;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir, ec)) {
    const std::string name = entry.path().filename().string();
    // AtomicDir's siblings: ".step-N.tmp-<pid>-<n>" (staging) and ".step-N.old-<pid>-<n>".
    if (entry.is_directory() && name.starts_with(".step-") &&
        (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos)) {
      fs::remove_all(entry.path(), ec);
      ++removed;
    }
  }
  return removed;
}

}  // namespace llmtune::train
