// `llmtune env [--json]`: parse, resolve the shared config, report.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "common.h"
#include "llmtune/pipelines/env.h"

namespace llmtune::cli {

namespace {
const CommonUse kEnvUse{.seed = false, .why_not = "env only reports what --device and --dtype would resolve to"};
}  // namespace

Command register_env(CLI::App& root) {
  auto* app = root.add_subcommand("env", "What this machine offers: CUDA/MPS/CPU, devices, libtorch, CUDA kernels, 4-bit/8-bit support, the default device and dtype");
  auto options = std::make_shared<CommonOptions>();
  add_common_options(app, *options, kEnvUse);
  return {app, [options] {
            config::Schema schema;
            add_common_keys(schema);
            config::Config cfg = resolve_config(schema, *options);
            if (print_config_if_asked(cfg, *options)) return 0;
            pipelines::EnvParams params{cfg.get_string("device"), cfg.get_string("dtype")};
            auto report = pipelines::collect_env(params);
            std::cout << (options->json ? pipelines::env_report_json(report) + "\n" : pipelines::env_report_text(report));
            return 0;
          }};
}

}  // namespace llmtune::cli
