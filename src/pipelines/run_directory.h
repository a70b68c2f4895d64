// A finetune run directory's state (run.json) and what a start, --resume and --force may do with
// it: the checks before a run begins and the writes as it goes.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "llmtune/pipelines/finetune.h"

namespace llmtune::pipelines {

// {} when absent or unreadable.
nlohmann::json read_run_state(const std::filesystem::path& output);
void write_run_state(const std::filesystem::path& output, const std::string& state, int64_t step, int64_t total_steps,
                     const std::string& error = "");
// A finished run: run.json says so, or (a run directory from before run.json) its summary does.
bool run_finished(const std::filesystem::path& output, const nlohmann::json& state);

struct RunStart {
  std::optional<std::filesystem::path> checkpoint;  // resume from it
  bool clear = false;                               // remove an earlier run's files before starting (--force, or a restart)
};

// A new run must not mix its files with an earlier one; a resumed run needs a checkpoint, except
// one that stopped before its first: that one starts over. Every refusal says which command works.
RunStart check_run_directory(const FinetuneParams& p);

// Removes an earlier run's files (only those a run writes) from `output`.
void clear_run_files(const std::filesystem::path& output);

}  // namespace llmtune::pipelines
