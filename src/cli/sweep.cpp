// `llmtune sweep`: SWEEP.yaml (a base config of any command plus a sweep: block) and key=value /
// key=[a,b] arguments → checked runs → run (or listed with --dry-run) → the results table; or
// --summary DIR, the table of any directory of runs.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <memory>

#include "common.h"
#include "llmtune/pipelines/sweep.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::cli {
namespace {

struct SweepOptions {
  std::vector<std::string> positionals;
  std::optional<std::string> summary, log_level;
  int64_t parallel = 1;
  bool dry_run = false, json = false;
};

void print_table(const nlohmann::ordered_json& table, bool json) {
  if (json) std::cout << table.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else std::cout << pipelines::summary_markdown(table);
}

int run(const SweepOptions& o) {
  if (o.log_level) log::set_level(*o.log_level);
  if (o.summary) {
    if (!o.positionals.empty() || o.dry_run || o.parallel != 1)
      throw UsageError("--summary DIR only reads a directory of runs: drop the sweep file, overrides, --dry-run and --parallel");
    print_table(pipelines::summarize_runs(*o.summary), o.json);
    return 0;
  }
  const auto [file, args] = split_config_args(o.positionals);
  if (!file && args.empty()) throw UsageError("give a SWEEP.yaml (and key=value / key=[a,b] arguments), or --summary DIR");
  if (o.parallel < 1) throw UsageError("--parallel: must be >= 1, got " + std::to_string(o.parallel));

  pipelines::SweepParams p;
  p.definition = pipelines::load_sweep(file, args);
  p.runs = pipelines::expand_sweep(p.definition);
  p.exe = std::filesystem::read_symlink("/proc/self/exe");
  p.parallel = static_cast<int>(o.parallel);
  pipelines::validate_sweep(p);
  if (o.dry_run) {
    if (o.json) {
      std::cout << pipelines::sweep_definition_json(p.definition, p.runs).dump(2) << "\n";
    } else {
      std::cout << fmt::format("{} run(s) of llmtune {} into {}:\n", p.runs.size(), p.definition.command, p.definition.output.string());
      for (const auto& r : p.runs) {
        std::string values;
        for (const auto& [k, v] : r.values) values += " " + k + "=" + v;
        std::cout << fmt::format("  {}  ({})\n", r.name, values.substr(1));
      }
    }
    return 0;
  }
  const auto table = pipelines::run_sweep(p);
  print_table(table, o.json);
  const int failed = table.value("failed", 0);
  if (failed) {
    std::cerr << fmt::format("llmtune: error: {} of {} run(s) failed (their logs: {}/logs/)\n", failed, p.runs.size(),
                             p.definition.output.string());
    return 1;
  }
  return 0;
}

}  // namespace

Command register_sweep(CLI::App& root) {
  auto* app = root.add_subcommand("sweep", "Run a grid / paired / sampled sweep of any command's config and tabulate the runs");
  auto o = std::make_shared<SweepOptions>();
  app->add_option("args", o->positionals, "SWEEP.yaml, key=value (fixed) and key=[a,b] (an axis) arguments");
  app->add_flag("--dry-run", o->dry_run, "check the configs and list the runs (name and values); runs nothing, writes nothing");
  app->add_option("--parallel", o->parallel, "runs at a time: on CUDA run slot i uses cuda:i; on CPU each run gets cores/N threads [1]");
  app->add_option("--summary", o->summary, "print (and write) the results table of DIR: a sweep directory or any directory of runs");
  app->add_option("--log-level", o->log_level, "trace|debug|info|warn|error|off");
  app->add_flag("--json", o->json, "print machine-readable JSON on stdout");
  return {app, [o] { return run(*o); }};
}

}  // namespace llmtune::cli
