// `llmtune sweep`: a base config of any command plus axes of values (grid, paired, sampled) become
// a table of runs, each run a child process of this binary in its own directory under the sweep
// directory; re-running resumes; the results table (sweep_summary.md/.jsonl/.csv, eval_loss.svg)
// is built for a sweep or for any directory of run directories.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::pipelines {

// key=value with the value as YAML text ("1e-3", "true", "[q_proj, v_proj]").
using KeyValues = std::vector<std::pair<std::string, std::string>>;

// One axis of the sweep: a grid key (one key) or a paired group (keys varied together).
// points[i][k] is the value of keys[k] in the axis' i-th point.
struct SweepAxis {
  std::vector<std::string> keys;
  std::vector<std::vector<std::string>> points;
  std::string origin;  // "sweep.yaml:7 (sweep.grid)", for messages
};

struct SweepDefinition {
  std::string command = "finetune";  // finetune | distill | prune | quantize | eval
  std::filesystem::path output;      // the sweep directory
  KeyValues base;                    // the fixed keys (file, then command line)
  std::vector<SweepAxis> axes;       // grid axes in file order, then paired groups, then command-line axes
  std::optional<int64_t> sample;     // draw this many combinations
  uint64_t seed = 0;                 // of the draw
  // Where each override text ("train.lr=1e-3") came from, for the child's error lines.
  std::vector<std::pair<std::string, std::string>> origins;
};

struct SweepRun {
  std::string name;  // "lr=1e-3,r=8": readable and safe as a directory name
  KeyValues values;  // the swept keys of this run
};

inline const std::vector<std::string>& sweep_commands() {
  static const std::vector<std::string> names{"finetune", "distill", "prune", "quantize", "eval"};
  return names;
}

// Reads SWEEP.yaml (may be empty: a plain config) and the command line's key=value / key=[a,b]
// arguments. Throws ConfigError listing every problem (file:line, key, what to do).
SweepDefinition load_sweep(const std::optional<std::filesystem::path>& file, const std::vector<std::string>& args);

// The runs, in grid order (the last axis varies fastest); with `sample`, the sampled subset in the
// same order. Sampling: combination i gets the rank mix64(seed + (i + 1) * 0x9E3779B97F4A7C15)
// (SplitMix64's finalizer); the `sample` combinations of lowest rank are run.
std::vector<SweepRun> expand_sweep(const SweepDefinition& d);

// The keys that vary across the runs, in axis order.
std::vector<std::string> swept_keys(const SweepDefinition& d);

// The command line of one run (after the binary): command, key=value for the base and the run's
// values, output=..., and the flags. Depends on the command (eval has no output key).
std::vector<std::string> run_arguments(const SweepDefinition& d, const SweepRun& run);

// The definition and run table as JSON (sweep.json's "definition", --dry-run --json).
nlohmann::ordered_json sweep_definition_json(const SweepDefinition& d, const std::vector<SweepRun>& runs);

struct SweepParams {
  SweepDefinition definition;
  std::vector<SweepRun> runs;
  std::filesystem::path exe;  // this binary
  int parallel = 1;
};

// Each run's config checked by its command (`llmtune <command> ... --print-config` in a child,
// base once and each axis point once), before anything runs; ConfigError with every problem.
void validate_sweep(const SweepParams& p);

// Runs the sweep (skipping finished runs, resuming interrupted ones) and writes the summary.
// Returns the summary table (summarize_runs) with "interrupted" and "failed" counts.
nlohmann::ordered_json run_sweep(const SweepParams& p);

// The results table of a sweep directory (sweep.json) or of any directory holding run directories:
// one row per run, the varied keys, the numbers, the best run. Writes sweep_summary.md, .jsonl,
// .csv and eval_loss.svg into `dir`.
nlohmann::ordered_json summarize_runs(const std::filesystem::path& dir);

// The Markdown table of summarize_runs' result, as printed.
std::string summary_markdown(const nlohmann::ordered_json& table);

}  // namespace llmtune::pipelines
