// run.json and the run-directory checks of `llmtune finetune` (run_directory.h).
#include "run_directory.h"

#include <spdlog/spdlog.h>

#include <ctime>
#include <fstream>

#include "llmtune/io/atomic_file.h"
#include "llmtune/train/checkpoint.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
namespace {

// The run directory's state, in run.json: "training" from the moment the directory appears, then
// "finished", "interrupted" (SIGINT/SIGTERM, checkpointed) or "failed" (with the error). A process
// killed outright leaves "training". It decides what a re-run, --resume and --force do.
constexpr const char* kRunStateFile = "run.json";
// Everything a run writes into its directory besides config.yaml (which every start rewrites).
constexpr const char* kRunFiles[] = {"checkpoints", "adapter", "model", "summary.json", "metrics.jsonl", "tb", "loss.svg", "train.log",
                                     kRunStateFile};

}  // namespace

nlohmann::json read_run_state(const fs::path& output) {
  std::ifstream in(output / kRunStateFile);
  if (!in) return nlohmann::json::object();
  auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : nlohmann::json::object();
}

void write_run_state(const fs::path& output, const std::string& state, int64_t step, int64_t total_steps,
                     const std::string& error) {
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json j = {{"state", state}, {"step", step}, {"total_steps", total_steps}, {"updated", when}};
  if (!error.empty()) j["error"] = error;
  io::write_file_atomic(output / kRunStateFile, j.dump(2) + "\n");
}

// A finished run: run.json says so, or (a run directory from before run.json) its summary does.
bool run_finished(const fs::path& output, const nlohmann::json& state) {
  if (state.contains("state")) return state.value("state", "") == "finished";
  std::ifstream in(output / "summary.json");
  if (!in) return false;
  auto j = nlohmann::json::parse(in, nullptr, false);
  return j.is_object() && !j.value("interrupted", true);
}


// A new run must not mix its files with an earlier one; a resumed run needs a checkpoint, except
// one that stopped before its first: that one starts over. Every refusal says which command works.
RunStart check_run_directory(const FinetuneParams& p) {
  std::error_code ec;
  if (fs::exists(p.output, ec) && !fs::is_directory(p.output, ec))
    throw UsageError(p.output.string() + " is a file, not a run directory: choose another --output");
  if (p.force) return {std::nullopt, true};
  const fs::path ckpts = p.output / "checkpoints";
  const nlohmann::json state = read_run_state(p.output);
  const std::string st = state.value("state", "");
  const std::optional<fs::path> latest = train::latest_checkpoint(ckpts);
  const std::string how = st.empty() ? "" : st + " at step " + state.value("step", nlohmann::json(0)).dump();
  if (p.resume) {
    if (!p.resume_from.empty()) return {p.resume_from, false};
    if (latest) return {latest, false};
    if (!st.empty() && st != "finished") {
      spdlog::warn("{}: the run stopped before its first checkpoint ({}); starting it again from step 0", p.output.string(), how);
      return {std::nullopt, true};
    }
    throw CheckpointError(ckpts.string() + ": no checkpoint to resume from (start without --resume)");
  }
  for (const char* taken : kRunFiles) {
    if (!fs::exists(p.output / taken)) continue;
    if (run_finished(p.output, state))
      throw UsageError(p.output.string() + " already holds a finished run; choose another --output, add --force to replace it, "
                       "or --resume with a larger train.max_steps to train it further");
    if (latest)
      throw UsageError(p.output.string() + " already holds a run (" + (how.empty() ? std::string(taken) : how) + ", last checkpoint " +
                       latest->filename().string() + "); continue it with --resume, or start it over with --force");
    throw UsageError(p.output.string() + " holds a run that stopped before its first checkpoint (" + (how.empty() ? std::string(taken) : how) +
                     "); start it over with --force (or --resume)");
  }
  return {};
}

// Removes an earlier run's files (only those a run writes) from `output`.
void clear_run_files(const fs::path& output) {
  int removed = 0;
  for (const char* name : kRunFiles) {
    std::error_code ec;
    if (fs::exists(output / name, ec)) {
      fs::remove_all(output / name);
      ++removed;
    }
  }
  if (removed) spdlog::info("removed the earlier run's files from {}", output.string());
}

}  // namespace llmtune::pipelines
