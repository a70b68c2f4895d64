// What `finetune` and `distill` share on the command line: finetune's config schema (distill adds
// its teacher.* and distill.* keys), the glue from a resolved config to FinetuneParams, and the
// closing line (or --json summary).
#pragma once

#include <CLI/App.hpp>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common.h"
#include "llmtune/pipelines/distill.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/util/config.h"

namespace llmtune::cli {

config::Schema finetune_schema();

// Every finetune setting as the config holds it, without the cross-key checks (validate reads a
// config those checks refuse, to check the rest of it).
pipelines::FinetuneParams read_finetune_params(const config::Config& cfg);
// Every training key of `cfg` into FinetuneParams, with the checks that span keys (ConfigError
// naming them). The run-directory flags (--resume, --force) and config_yaml are the caller's.
pipelines::FinetuneParams finetune_params(const config::Config& cfg, const config::Schema& schema);

void print_training_summary(const nlohmann::json& summary, bool json);

// distill's schema (finetune's plus teacher.* and distill.*) and its DistillParams, with its
// cross-key check (ConfigError).
config::Schema distill_schema();
std::shared_ptr<pipelines::DistillParams> distill_params(const config::Config& cfg, const config::Schema& schema);

// The flags finetune and distill share: --model, --data, --output, --max-steps, --resume [DIR], --force.
struct TrainingFlags {
  std::optional<std::string> model, data, output, resume;
  std::optional<int64_t> max_steps;
  bool force = false;
  CLI::Option* resume_option = nullptr;
  CLI::Option* force_option = nullptr;
};
void add_training_flags(CLI::App* app, TrainingFlags& flags, const char* model_help);
// Their keys (model.path, data.path, output, train.max_steps). `--resume key=value` (CLI11 hands
// the override to --resume's optional value) becomes an override, not a checkpoint path.
FlagValues training_flag_values(TrainingFlags& flags, CommonOptions& options);
// Sets the run-directory flags, the saved config.yaml and --json's quiet on `p`, runs the job and
// prints its closing line or summary.
void run_training(pipelines::FinetuneParams p, const config::Config& cfg, const TrainingFlags& flags, bool json);

}  // namespace llmtune::cli
