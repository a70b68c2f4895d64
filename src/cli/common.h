// The option table every command shares (--device, --dtype, --seed, --log-level, --json,
// --print-config, [CONFIG.yaml] [key=value ...]) and the glue from those options to a Config.
#pragma once

#include <CLI/App.hpp>

#include <filesystem>
#include <functional>
#include <optional>
#include <sstream>
#include <type_traits>
#include <string>
#include <vector>

#include "llmtune/pipelines/quantize_on_load.h"
#include "llmtune/util/config.h"

namespace llmtune::cli {

// Which of the shared --device, --dtype, --seed a command uses. The others stay out of its --help
// and are refused, as flags and as key=value, with "--seed has no effect for <command> (<why>)";
// their keys stay in the schema so that one shared YAML (configs/common.yaml) serves every command,
// and a value from such a file is logged as unused.
struct CommonUse {
  bool device = true, dtype = true, seed = true;
  const char* why_not = "";  // why the unused ones would do nothing
};
inline const CommonUse kEveryCommonOption{};

struct CommonOptions {
  std::vector<std::string> positionals;  // CONFIG.yaml and key=value overrides, in any order
  std::optional<std::string> device, dtype, log_level;
  std::optional<int64_t> seed;
  bool json = false;
  bool print_config = false;
  std::string command;  // the command's name, for messages
  CommonUse use;        // set by add_common_options
};

// Values from command-specific flags, the highest config layer: the key, the text, and the flag as
// typed ("" when it is "--" + the key with '-' for '_', as "--max-new-tokens" for max_new_tokens).
using FlagValues = std::vector<config::FlagValue>;

// Range checks for every integer and number option of `app` and its subcommands, on the text as
// typed: CLI11 would clamp 1e30 to INT64_MAX silently. Refused as "--flag: ... out of range".
void check_numeric_options(CLI::App& app);

// Adds the shared options to a command (those `use` leaves out are hidden and refused).
void add_common_options(CLI::App* command, CommonOptions& options, const CommonUse& use = kEveryCommonOption);

// Adds the keys behind the shared flags (device, dtype, seed, log_level) to a command's schema.
void add_common_keys(config::Schema& schema);

// The chat template keys (finetune's data.template, eval's template): auto (the tokenizer's own), a
// template shipped in the binary, or a path to a .jinja file. check_chat_template is their `check`.
std::string check_chat_template(const config::Value& value);
inline constexpr const char* kChatTemplateHelp =
    "chat template: auto (the tokenizer's), alpaca, chatml, llama3, mistral, zephyr, or a path to a .jinja file";

// Quantizing a 16-bit model while it loads: the keys `<prefix>quantize` (none|nf4|fp4|int8),
// `<prefix>double_quant` and `<prefix><blocksize_key>` (eval/infer/serve: "", "blocksize"; distill's
// teacher: "teacher.", "quant_blocksize"). quantize_on_load reads them; the 4-bit options given with
// none or int8 are refused (ConfigError naming the key), not ignored.
void add_quantize_on_load_keys(config::Schema& schema, const std::string& prefix, const std::string& blocksize_key);
pipelines::QuantizeOnLoad quantize_on_load(const config::Config& cfg, const std::string& prefix,
                                           const std::string& blocksize_key);
// The flags of the top-level keys: --quantize, --double-quant, --blocksize.
struct LoadQuantizeFlags {
  std::optional<std::string> quantize;
  std::optional<int64_t> blocksize;
  bool double_quant = false;
};
void add_quantize_on_load_flags(CLI::App* app, LoadQuantizeFlags& flags);
void add_quantize_on_load_values(FlagValues& values, const LoadQuantizeFlags& flags);

// The positional arguments split into the config file (a .yaml/.yml argument without '=', or an
// existing such file: a sweep run's path holds '=') and key=value overrides; UsageError otherwise.
struct ConfigArgs {
  std::optional<std::filesystem::path> file;
  std::vector<std::string> overrides;
};
ConfigArgs split_config_args(const std::vector<std::string>& positionals);

// Resolves the command's config from its YAML file, overrides and flags, applies log_level, and
// returns it. `extra_flags` are (key, value) pairs from command-specific flags.
config::Config resolve_config(const config::Schema& schema, const CommonOptions& options,
                              FlagValues extra_flags = {});

// Adds the flag's value under `key` when the flag was given on the command line; `flag_name` is
// the flag as typed when it is not "--" + key with '-' for '_' ("--max-steps" for train.max_steps).
template <typename T>
void add_flag_value(FlagValues& values, const char* key, const std::optional<T>& flag, const char* flag_name = "") {
  if (!flag) return;
  if constexpr (std::is_same_v<T, std::string>) {
    values.push_back({key, *flag, flag_name});
  } else {
    std::ostringstream text;
    text.precision(17);  // doubles round-trip exactly
    text << *flag;
    values.push_back({key, text.str(), flag_name});
  }
}

// A boolean flag given on the command line (`--force`) sets its key to true.
inline void add_flag_value(FlagValues& values, const char* key, bool given) {
  if (given) values.push_back({key, "true", ""});
}

// With --print-config: prints the resolved config as YAML and returns true (the command ends).
bool print_config_if_asked(const config::Config& config, const CommonOptions& options);

// A registered subcommand: its CLI11 app and what runs when it was chosen.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command register_env(CLI::App& root);
Command register_eval(CLI::App& root);
Command register_infer(CLI::App& root);
Command register_tokenize(CLI::App& root);
Command register_finetune(CLI::App& root);
Command register_merge(CLI::App& root);
Command register_quantize(CLI::App& root);
Command register_prune(CLI::App& root);
Command register_distill(CLI::App& root);
Command register_validate(CLI::App& root);
Command register_serve(CLI::App& root);
Command register_sweep(CLI::App& root);

}  // namespace llmtune::cli
