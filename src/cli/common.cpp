// Shared options and config resolution for every command.
#include "common.h"

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <charconv>
#include <climits>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <tuple>

#include "llmtune/data/dataset.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::cli {

void add_common_options(CLI::App* command, CommonOptions& o, const CommonUse& use) {
  o.command = command->get_name();
  o.use = use;
  // An option the command does not use is still parsed (so that it is refused with a reason rather
  // than CLI11's "not expected"), but kept out of --help: group "" hides it.
  auto offer = [](CLI::Option* option, bool used) {
    if (!used) option->group("");
  };
  command->add_option("args", o.positionals, "CONFIG.yaml and/or key=value overrides");
  offer(command->add_option("--device", o.device, "auto|cuda|cuda:N|mps|cpu (default auto: CUDA, then MPS, then CPU)"),
        use.device);
  offer(command->add_option("--dtype", o.dtype, "auto|fp32|bf16|fp16 (default auto: bf16 on CUDA, fp32 elsewhere)"),
        use.dtype);
  offer(command->add_option("--seed", o.seed, "random seed"), use.seed);
  command->add_option("--log-level", o.log_level, "trace|debug|info|warn|error|off");
  command->add_flag("--json", o.json, "print machine-readable JSON on stdout");
  command->add_flag("--print-config", o.print_config, "print the resolved config as YAML and exit");
}

void add_common_keys(config::Schema& schema) {
  schema.add({.name = "device", .type = config::Type::String, .default_value = std::string("auto"),
              .help = "auto|cuda|cuda:N|mps|cpu",
              .check = [](const config::Value& v) -> std::string {
                return is_valid_device_request(std::get<std::string>(v))
                           ? "" : "'" + std::get<std::string>(v) + "' is not a device: use auto, cuda, cuda:N, mps or cpu";
              }});
  schema.add({.name = "dtype", .type = config::Type::String, .default_value = std::string("auto"),
              .help = "compute dtype: auto|fp32|bf16|fp16", .choices = dtype_choices()});
  schema.add({.name = "seed", .type = config::Type::Int, .default_value = int64_t{42},
              .help = "random seed", .min = 0});
  schema.add({.name = "log_level", .type = config::Type::String, .default_value = std::string("info"),
              .help = "trace|debug|info|warn|error|off",
              .choices = {"trace", "debug", "info", "warn", "error", "off"}});
}

void add_quantize_on_load_keys(config::Schema& s, const std::string& prefix, const std::string& blocksize_key) {
  using config::Type;
  s.add({.name = prefix + "quantize", .type = Type::String, .default_value = std::string("none"),
         .help = "quantize a 16-bit model's linears (all but lm_head) while it loads: nf4, fp4 (4 bits) or int8 (LLM.int8); none",
         .choices = {"none", "nf4", "fp4", "int8"}});
  s.add({.name = prefix + "double_quant", .type = Type::Bool, .default_value = false,
         .help = "with " + prefix + "quantize nf4/fp4: quantize the block absmax too (bnb_4bit_use_double_quant)"});
  s.add({.name = prefix + blocksize_key, .type = Type::Int, .default_value = int64_t{64},
         .help = "with " + prefix + "quantize nf4/fp4: weights per absmax block, a power of two", .min = 32, .max = 4096,
         .check = [](const config::Value& v) {
           const int64_t b = std::get<int64_t>(v);
           return b & (b - 1) ? std::to_string(b) + " is not a power of two" : std::string();
         }});
}

pipelines::QuantizeOnLoad quantize_on_load(const config::Config& cfg, const std::string& prefix,
                                           const std::string& blocksize_key) {
  pipelines::QuantizeOnLoad q;
  q.type = cfg.get_string(prefix + "quantize");
  q.double_quant = cfg.get_bool(prefix + "double_quant");
  q.blocksize = cfg.get_int(prefix + blocksize_key);
  if (q.type == "nf4" || q.type == "fp4") return q;
  auto refuse = [&](const std::string& key) {
    throw ConfigError(key + ": applies to " + prefix + "quantize nf4 or fp4, not " + q.type + " (" +
                      cfg.origin(key).describe() + "): remove it, or choose a 4-bit type");
  };
  if (q.double_quant) refuse(prefix + "double_quant");
  if (cfg.origin(prefix + blocksize_key).kind != config::Origin::Kind::Default) refuse(prefix + blocksize_key);
  return q;
}

void add_quantize_on_load_flags(CLI::App* app, LoadQuantizeFlags& flags) {
  app->add_option("--quantize", flags.quantize,
                  "quantize a 16-bit model while it loads: nf4|fp4|int8|none (bitsandbytes' formats; lm_head stays dense) [none]");
  app->add_flag("--double-quant", flags.double_quant, "with --quantize nf4/fp4: quantize the block absmax too");
  app->add_option("--blocksize", flags.blocksize, "with --quantize nf4/fp4: weights per absmax block, a power of two in [32, 4096] [64]");
}

void add_quantize_on_load_values(FlagValues& values, const LoadQuantizeFlags& flags) {
  add_flag_value(values, "quantize", flags.quantize);
  add_flag_value(values, "double_quant", flags.double_quant);
  add_flag_value(values, "blocksize", flags.blocksize);
}

std::string check_chat_template(const config::Value& value) {
  const std::string& name = std::get<std::string>(value);
  if (name == "auto") return "";
  for (const auto& known : data::named_templates())
    if (name == known) return "";
  if (name.ends_with(".jinja")) {
    std::error_code ec;
    return std::filesystem::is_regular_file(name, ec) ? "" : "'" + name + "': no such template file";
  }
  std::string names = "auto";
  for (const auto& known : data::named_templates()) names += ", " + known;
  return "'" + name + "' is not a chat template: use " + names + ", or a path to a .jinja file";
}

void check_numeric_options(CLI::App& app) {
  // CLI11 converts integers with strtoll and keeps the clamped result; check the text first.
  static const CLI::Validator integer(
      [](std::string& text) -> std::string {
        int64_t v = 0;
        const char* begin = text.data() + (text.starts_with('+') ? 1 : 0);
        auto [ptr, ec] = std::from_chars(begin, text.data() + text.size(), v);
        if (ec == std::errc::result_out_of_range)
          return "'" + text + "' is out of range (an integer from " + std::to_string(INT64_MIN) + " to " +
                 std::to_string(INT64_MAX) + ")";
        if (ec != std::errc() || ptr != text.data() + text.size()) return "'" + text + "' is not an integer";
        return "";
      },
      "", "int64");
  static const CLI::Validator number(
      [](std::string& text) -> std::string {
        double v = 0;
        const char* begin = text.data() + (text.starts_with('+') ? 1 : 0);
        auto [ptr, ec] = std::from_chars(begin, text.data() + text.size(), v);
        if (ec == std::errc::result_out_of_range) return "'" + text + "' is out of the range of a number";
        if (ec != std::errc() || ptr != text.data() + text.size() || !std::isfinite(v))
          return "'" + text + "' is not a finite number";
        return "";
      },
      "", "finite");
  for (CLI::Option* option : app.get_options()) {
    if (option->get_type_name() == "INT") option->check(integer);
    else if (option->get_type_name() == "FLOAT") option->check(number);
  }
  for (CLI::App* sub : app.get_subcommands({})) check_numeric_options(*sub);
}

bool print_config_if_asked(const config::Config& config, const CommonOptions& options) {
  if (options.print_config) std::cout << config.to_yaml();
  return options.print_config;
}

ConfigArgs split_config_args(const std::vector<std::string>& positionals) {
  ConfigArgs args;
  for (const auto& arg : positionals) {
    // A config file may have '=' in its path (a sweep's run directories are named "lr=1e-3,r=8"):
    // an existing file wins over reading the argument as key=value.
    std::error_code ec;
    const bool is_yaml = (arg.ends_with(".yaml") || arg.ends_with(".yml")) &&
                         (arg.find('=') == std::string::npos || std::filesystem::is_regular_file(arg, ec));
    if (is_yaml) {
      if (args.file) throw UsageError("two config files given ('" + args.file->string() + "' and '" + arg + "'); pass one and use key=value for the rest");
      args.file = arg;
    } else if (arg.find('=') != std::string::npos) {
      args.overrides.push_back(arg);
    } else {
      throw UsageError("unexpected argument '" + arg + "': expected a CONFIG.yaml file or key=value");
    }
  }
  return args;
}

config::Config resolve_config(const config::Schema& schema, const CommonOptions& o, FlagValues extra_flags) {
  // The shared options this command does not use: refused, whether given as a flag or as key=value.
  for (const auto& [used, key, given] : {std::tuple{o.use.device, "device", o.device.has_value()},
                                         {o.use.dtype, "dtype", o.dtype.has_value()},
                                         {o.use.seed, "seed", o.seed.has_value()}}) {
    if (used) continue;
    bool as_override = false;
    for (const auto& arg : o.positionals) as_override |= arg.starts_with(std::string(key) + "=");
    if (given || as_override)
      throw UsageError(std::string(given ? "--" : "") + key + (given ? "" : "=...") + " has no effect for " + o.command +
                       (*o.use.why_not ? std::string(" (") + o.use.why_not + ")" : std::string()) + "; drop it");
  }
  config::Sources sources;
  ConfigArgs args = split_config_args(o.positionals);
  sources.file = std::move(args.file);
  sources.overrides = std::move(args.overrides);
  add_flag_value(sources.flags, "device", o.device);
  add_flag_value(sources.flags, "dtype", o.dtype);
  add_flag_value(sources.flags, "seed", o.seed);
  add_flag_value(sources.flags, "log_level", o.log_level);
  for (auto& f : extra_flags) sources.flags.push_back(std::move(f));
  config::Config cfg = config::Config::resolve(schema, sources);
  log::set_level(cfg.get_string("log_level"));
  for (const auto& [used, key] : {std::pair{o.use.device, "device"}, {o.use.dtype, "dtype"}, {o.use.seed, "seed"}})
    if (!used && cfg.has(key) && cfg.origin(key).kind == config::Origin::Kind::File)
      spdlog::info("{}: {} (from {}) has no effect for {}", o.command, key, cfg.origin(key).describe(), o.command);
  return cfg;
}

}  // namespace llmtune::cli
