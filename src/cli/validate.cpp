// `llmtune validate CONFIG.yaml [key=value ...]`: which command the config is for, its config
// problems (all of them: after a failed resolution the offending keys are set aside and resolution
// retried, so that the model and data are still checked), the command's cross-key checks, then the
// pipeline's checks; one report, exit 0 only when a run would start.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "command_params.h"
#include "common.h"
#include "training.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/sweep.h"
#include "llmtune/pipelines/validate.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::cli {
namespace {

const std::vector<std::string> kChecked = {"finetune", "distill", "prune", "quantize", "eval", "serve", "env"};

config::Schema schema_for(const std::string& command) {
  if (command == "distill") return distill_schema();
  if (command == "prune") return prune_schema();
  if (command == "quantize") return quantize_schema();
  if (command == "eval") return eval_schema();
  if (command == "serve") return serve_schema();
  if (command == "env") {  // (the keys every command shares, as env --print-config resolves them)
    config::Schema s;
    add_common_keys(s);
    return s;
  }
  return finetune_schema();
}

struct Inputs {
  std::optional<std::filesystem::path> file;
  std::string text;  // the YAML, with a `command:` line blanked (line numbers kept)
  std::vector<std::string> overrides;
  config::Sources sources() const {
    config::Sources s;
    s.file = file;
    if (file) s.yaml_text = text;
    s.overrides = overrides;
    return s;
  }
};

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

size_t indent(const std::string& line) { return line.find_first_not_of(' ') == std::string::npos ? 0 : line.find_first_not_of(' '); }

// Blanks line `n` (1-based) of the YAML and the block under it (deeper lines, and a block list at its
// own indentation), keeping every other line where it was.
bool blank_yaml_entry(std::string& text, size_t n) {
  std::vector<std::string> lines = split_lines(text);
  if (n == 0 || n > lines.size() || lines[n - 1].find_first_not_of(' ') == std::string::npos) return false;
  const size_t own = indent(lines[n - 1]);
  lines[n - 1].clear();
  for (size_t i = n; i < lines.size(); ++i) {
    const std::string& l = lines[i];
    const size_t first = l.find_first_not_of(' ');
    if (first == std::string::npos || l[first] == '#') continue;
    if (first > own || (first == own && l.compare(first, 2, "- ") == 0)) lines[i].clear();
    else break;
  }
  text = join_lines(lines);
  return true;
}

// The config problems' sources set aside, so that a retry resolves what is left: a file line, a
// key=value, a missing required key (then resolved as unset: the checks that need it are skipped).
bool set_aside(const std::vector<std::string>& errors, Inputs& in, std::vector<config::FlagValue>& flags,
               std::set<std::string>& unset_required) {
  bool changed = false;
  static const std::regex missing("^missing required key '([^']+)'");
  static const std::regex override_source("^command line '([^']+)': ");
  static const std::regex flag_source("^flag (--[a-z_-]+): ");
  for (const auto& e : errors) {
    std::smatch m;
    if (std::regex_search(e, m, missing)) {
      changed |= unset_required.insert(m[1]).second;
    } else if (std::regex_search(e, m, flag_source)) {
      const auto before = flags.size();
      std::erase_if(flags, [&](const config::FlagValue& f) {
        std::string spelled = "--" + f.key;
        std::replace(spelled.begin(), spelled.end(), '_', '-');
        return spelled == m[1].str();
      });
      changed |= flags.size() != before;
    } else if (std::regex_search(e, m, override_source)) {
      auto it = std::find(in.overrides.begin(), in.overrides.end(), m[1].str());
      if (it != in.overrides.end()) in.overrides.erase(it), changed = true;
    } else if (in.file) {
      const std::string prefix = in.file->string() + ":";
      if (!e.starts_with(prefix)) continue;
      const size_t n = std::strtoul(e.c_str() + prefix.size(), nullptr, 10);
      changed |= blank_yaml_entry(in.text, n);
    }
  }
  return changed;
}

// The command the config is for: --command, a top-level `command:` key (taken out of the YAML), the
// file's first line as the presets write it ("# llmtune finetune ..."), else distill when teacher.* or
// distill.* keys appear, else finetune. Returns the command and how it was found.
std::pair<std::string, std::string> find_command(const std::optional<std::string>& flag, Inputs& in) {
  std::string from_key;
  std::vector<std::string> lines = split_lines(in.text);
  static const std::regex key("^command:\\s*([A-Za-z_]+)\\s*(#.*)?$");
  for (size_t i = 0; i < lines.size(); ++i) {
    std::smatch m;
    if (std::regex_match(lines[i], m, key)) {
      from_key = m[1];
      lines[i].clear();
      in.text = join_lines(lines);
      if (!flag) return {from_key, "the command: key at " + in.file->string() + ":" + std::to_string(i + 1)};
    }
  }
  if (flag) return {*flag, "--command"};
  static const std::regex comment("^#\\s*llmtune\\s+([a-z_]+)\\b.*");
  std::smatch m;
  if (!lines.empty() && std::regex_match(lines[0], m, comment))
    return {m[1], "the file's first line, '" + lines[0].substr(0, 60) + "'"};
  static const std::regex distill_key("^(teacher|distill)([.:]|\\s*:)");
  for (const auto& l : lines)
    if (std::regex_search(l, distill_key)) return {"distill", "its teacher/distill keys"};
  for (const auto& o : in.overrides)
    if (o.starts_with("teacher.") || o.starts_with("distill.")) return {"distill", "its teacher/distill keys"};
  return {"finetune", "the default (no --command, command: key or '# llmtune <command>' first line)"};
}

// The settings as the config holds them, for when the command's cross-key checks refused it (that
// refusal is already a problem); an adapter section the method cannot read falls back to LoRA's.
pipelines::FinetuneParams basic_params(const config::Config& cfg) {
  pipelines::FinetuneParams p = read_finetune_params(cfg);
  if (p.data.val_fraction > 0 && !p.data.val_path.empty()) p.data.val_path.clear();
  if (p.method != "full") {
    try {
      p.adapter = peft::find_adapter_method(p.method == "qlora" ? "lora" : p.method)->from_config(cfg);
    } catch (const Error&) {
      p.adapter = peft::find_adapter_method("lora")->from_config(cfg);
    }
  }
  return p;
}

void add_problem_lines(pipelines::ValidateReport& report, const std::string& text) {
  for (const auto& line : split_lines(text))
    if (!line.empty()) report.problems.push_back(line);
}

// wanda and sparsegpt (prune) and gptq (quantize) calibrate: without calibration text the pipeline refuses to start.
void require_calibration(const std::string& command, const std::string& method, const std::string& calibration,
                         pipelines::ValidateReport& report) {
  const bool needs = command == "prune" ? method == "wanda" || method == "sparsegpt" : command == "quantize" && method == "gptq";
  if (needs && calibration.empty())
    report.problems.push_back("calibration: required for --method " + method + " (text to calibrate on: a .txt or .jsonl file)");
}

// What prune, quantize, eval and serve would read, from the command's own parameters (its up-front
// checks included: the first that fails is a problem, and the inputs are then read from the config).
pipelines::CommandInputs command_inputs(const std::string& command, const config::Config& cfg, pipelines::ValidateReport& report) {
  pipelines::CommandInputs in;
  auto opt = [&](const char* key) {  // (a key the command's schema lacks: unset)
    try {
      return cfg.has(key) ? cfg.get_string(key) : std::string();
    } catch (const std::exception&) {
      return std::string();
    }
  };
  in.device = cfg.get_string("device");
  in.dtype = cfg.get_string("dtype");
  using Data = pipelines::CommandInputs::Data;
  try {
    if (command == "prune") {
      const pipelines::PruneParams p = prune_params(cfg);
      in.model = p.model, in.output = p.output.string(), in.output_kind = "dir", in.force = p.force;
      if (!p.calibration.empty())
        in.data.push_back(Data{.key = "calibration", .path = p.calibration, .seq_len = p.seq_len, .windows = p.calibration_samples, .seed = p.seed});
      if (!p.eval_data.empty()) in.data.push_back(Data{.key = "eval_data", .path = p.eval_data, .seq_len = p.eval_max_seq_len});
    } else if (command == "quantize") {
      const pipelines::QuantizeParams p = quantize_params(cfg);
      in.model = p.model, in.output = p.output.string(), in.force = p.force;
      in.output_kind = p.gptq.method.empty() && p.bnb.type.empty() ? "gguf" : "dir";
      if (!p.adapter.empty()) in.adapters.push_back({"adapter", p.adapter});
      if (!p.bnb.type.empty()) pipelines::check_bnb_options(p.bnb);
      const auto& c = p.gptq.calibration;
      if (!c.path.empty())
        in.data.push_back(Data{.key = "calibration", .path = c.path.string(), .seq_len = c.seq_len, .windows = c.samples, .seed = c.seed});
      if (!p.eval_data.empty()) in.data.push_back(Data{.key = "eval_data", .path = p.eval_data, .seq_len = p.eval_max_seq_len});
    } else if (command == "env") {
      return in;  // (the device and dtype only)
    } else if (command == "eval") {
      const pipelines::EvalParams p = eval_params(cfg);
      in.model = p.model;
      if (!p.adapter.empty()) in.adapters.push_back({"adapter", p.adapter});
      in.data.push_back(Data{.key = "data", .path = p.data, .format = p.format, .chat_template = p.chat_template, .seq_len = p.max_seq_len});
    } else {
      const serve::ServeParams p = serve_params(cfg);
      in.model = p.model;
      for (const auto& a : p.adapters) in.adapters.push_back({"adapters[" + a.name + "]", a.path});
    }
    require_calibration(command, opt("method"), opt("calibration"), report);
    return in;
  } catch (const Error& e) {
    add_problem_lines(report, e.what());
  }
  // (The command refused the config: what can still be checked, read from it directly.)
  require_calibration(command, opt("method"), opt("calibration"), report);
  in.model = opt("model");
  in.output = opt("output");
  if (command == "prune") in.output_kind = "dir";
  if (command == "quantize" && (!opt("method").empty() || pipelines::is_bnb_type(opt("type")))) in.output_kind = "dir";
  else if (command == "quantize" && !opt("type").empty()) in.output_kind = "gguf";
  try {
    in.force = cfg.has("force") && cfg.get_bool("force");
  } catch (const std::exception&) {
  }
  if (command == "serve") {
    for (const auto& a : cfg.get_list("adapters"))
      if (a.find('=') != std::string::npos) in.adapters.push_back({"adapters[" + a.substr(0, a.find('=')) + "]", a.substr(a.find('=') + 1)});
  } else if (!opt("adapter").empty()) {
    in.adapters.push_back({"adapter", opt("adapter")});
  }
  for (const char* key : {"calibration", "eval_data", "data"})
    if (!opt(key).empty()) in.data.push_back(Data{.key = key, .path = opt(key), .seq_len = 1});
  return in;
}

// A sweep file: every swept value resolved into the base config as its run would resolve it, and
// the command's cross-key checks run on it; a value the run would refuse is a problem naming it.
void check_swept_values(const Inputs& in, const std::string& command, const std::vector<config::FlagValue>& flags,
                        pipelines::ValidateReport& report) {
  pipelines::SweepDefinition def;
  try {
    def = pipelines::load_sweep(in.file, in.overrides);
  } catch (const Error& e) {
    add_problem_lines(report, e.what());
    return;
  }
  const config::Schema schema = schema_for(command);
  int64_t values = 0;
  for (const auto& axis : def.axes) {
    for (const auto& point : axis.points) {
      config::Sources sources = in.sources();
      sources.flags = flags;
      std::string spelled;
      for (size_t k = 0; k < axis.keys.size(); ++k) {
        sources.overrides.push_back(axis.keys[k] + "=" + point[k]);
        spelled += (k ? ", " : "") + axis.keys[k] + "=" + point[k];
      }
      ++values;
      try {
        const config::Config cfg = config::Config::resolve(schema, sources);
        if (command == "finetune" || command == "distill") finetune_params(cfg, schema);
        if (command == "distill") distill_params(cfg, schema);
        if (command == "prune") prune_params(cfg);
        if (command == "quantize") quantize_params(cfg);
        if (command == "eval") eval_params(cfg);
      } catch (const Error& e) {
        for (const auto& line : split_lines(e.what()))
          if (!line.empty()) report.problems.push_back("sweep value " + spelled + " (" + axis.origin + "): " + line);
      }
    }
  }
  report.sections["sweep"] = {{"axes", def.axes.size()}, {"values_checked", values}};
}

int run_validate(CommonOptions& o, const std::optional<std::string>& command_flag) {
  Inputs in;
  ConfigArgs args = split_config_args(o.positionals);
  in.file = std::move(args.file);
  in.overrides = std::move(args.overrides);
  if (in.file) {
    std::ifstream f(*in.file, std::ios::binary);
    if (!f) throw ConfigError(in.file->string() + ": cannot read the config file (does it exist?)");
    std::ostringstream text;
    text << f.rdbuf();
    in.text = text.str();
  }
  const auto [command, command_from] = find_command(command_flag, in);
  if (std::find(kChecked.begin(), kChecked.end(), command) == kChecked.end())
    throw UsageError("validate checks finetune, distill, prune, quantize, eval, serve and env configs; " +
                     (in.file ? in.file->string() : std::string("the config")) + " is for '" + command + "' (from " +
                     command_from + "): give --command with one of them if it is for one");

  pipelines::ValidateReport report;
  report.command = command;
  // A sweep file (llmtune sweep): its base config is what can be checked; the sweep: block varies it.
  static const std::regex sweep_block("^sweep:\\s*(#.*)?$");
  const std::vector<std::string> lines = split_lines(in.text);
  bool sweep = false;
  for (size_t i = 0; i < lines.size(); ++i)
    if (std::regex_match(lines[i], sweep_block) && blank_yaml_entry(in.text, i + 1)) sweep = true;
  const Inputs base = in;
  report.sections["config"] = {{"file", in.file ? in.file->string() : ""}, {"command_from", command_from}};
  config::Schema schema = schema_for(command);
  std::vector<config::FlagValue> flags;
  add_flag_value(flags, "device", o.device);
  add_flag_value(flags, "dtype", o.dtype);
  add_flag_value(flags, "seed", o.seed);
  add_flag_value(flags, "log_level", o.log_level);

  // Resolve; on failure keep every line as a problem, set their sources aside and resolve again.
  std::optional<config::Config> cfg;
  std::set<std::string> unset_required;
  for (int attempt = 0; attempt < 4 && !cfg; ++attempt) {
    config::Schema relaxed;
    for (config::Key k : schema.keys()) {
      if (unset_required.count(k.name)) k.required = false;
      relaxed.add(k);
    }
    config::Sources sources = in.sources();
    sources.flags = flags;
    for (const auto& key : unset_required) sources.flags.push_back({key, "", key});  // an empty string: "not set"
    try {
      cfg = config::Config::resolve(relaxed, sources);
    } catch (const ConfigError& e) {
      const std::vector<std::string> errors = split_lines(e.what());
      if (attempt == 0) add_problem_lines(report, e.what());
      if (!set_aside(errors, in, flags, unset_required)) break;
    }
  }
  if (cfg && print_config_if_asked(*cfg, o)) return 0;
  if (cfg) log::set_level(cfg->get_string("log_level"));
  if (cfg && (command == "finetune" || command == "distill")) {
    pipelines::FinetuneParams p;
    try {
      p = finetune_params(*cfg, schema);
      if (command == "distill") p.distill = distill_params(*cfg, schema);
    } catch (const ConfigError& e) {
      add_problem_lines(report, e.what());
      p = basic_params(*cfg);
      if (command == "distill") {
        try {
          p.distill = distill_params(*cfg, schema);
        } catch (const ConfigError&) {
        }
      }
    }
    p.command = command;
    pipelines::validate_training(p, report);
  } else if (cfg) {
    pipelines::validate_command(command_inputs(command, *cfg, report), report);
  } else {
    report.problems.push_back("the model and data were not checked: fix the config problems above first");
  }
  if (sweep) check_swept_values(base, command, flags, report);
  if (o.json) std::cout << report.to_json().dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else std::cout << report.to_text();
  return report.ok() ? 0 : 2;
}

}  // namespace

Command register_validate(CLI::App& root) {
  auto* app = root.add_subcommand("validate", "check a config (finetune, distill, prune, quantize, eval, serve), its model, "
                                               "adapters and data without running: every problem at once, with statistics");
  auto options = std::make_shared<CommonOptions>();
  auto command = std::make_shared<std::optional<std::string>>();
  add_common_options(app, *options);
  app->add_option("--command", *command,
                  "the command the config is for (default: a command: key, else the '# llmtune <command>' first line, else "
                  "distill when teacher.*/distill.* keys are set, else finetune)")
      ->check(CLI::IsMember(kChecked));
  return {app, [options, command] { return run_validate(*options, *command); }};
}

}  // namespace llmtune::cli
