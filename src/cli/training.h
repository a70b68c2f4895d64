// What `finetune` and `distill` share on the command line: finetune's config schema (distill adds
// its teacher.* and distill.* keys), the glue from a resolved config to FinetuneParams, and the
// closing line (or --json summary).
#pragma once

#include <nlohmann/json.hpp>

#include "llmtune/pipelines/finetune.h"
#include "llmtune/util/config.h"

namespace llmtune::cli {

config::Schema finetune_schema();

// Every training key of `cfg` into FinetuneParams, with the checks that span keys (ConfigError
// naming them). The run-directory flags (--resume, --force) and config_yaml are the caller's.
pipelines::FinetuneParams finetune_params(const config::Config& cfg, const config::Schema& schema);

void print_training_summary(const nlohmann::json& summary, bool json);

}  // namespace llmtune::cli
