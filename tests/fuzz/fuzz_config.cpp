// Fuzz target: the YAML config layer (util/config.h): YAML parsing, nested maps to dotted keys,
// type conversion, ranges, choices, checks, required keys, typo suggestions, then the resolved
// config's getters and to_yaml(). The input is the YAML file, then optionally NUL-separated
// `key=value` overrides, as `llmtune finetune run.yaml key=value...` receives them. The schema is
// shaped like finetune's (src/cli/finetune.cpp, not linkable from here): every key type and
// constraint kind, and the LoRA section the adapter registry adds.
#include <optional>

#include "fuzz_util.h"
#include "llmtune/peft/method.h"
#include "llmtune/util/config.h"

namespace {

using namespace llmtune;
using config::Type;
using config::Value;

config::Key choice(const char* name, const char* def, std::vector<std::string> choices) {
  return {.name = name, .type = Type::String, .default_value = std::string(def), .choices = std::move(choices)};
}
config::Key integer(const char* name, int64_t def, double min) {
  return {.name = name, .type = Type::Int, .default_value = def, .min = min};
}
config::Key number(const char* name, double def, double min, std::optional<double> max = {}, bool min_exclusive = false) {
  return {.name = name, .type = Type::Float, .default_value = def, .min = min, .max = max, .min_exclusive = min_exclusive};
}
config::Key flag(const char* name, bool def) { return {.name = name, .type = Type::Bool, .default_value = def}; }
config::Key text(const char* name, bool required = false) {
  config::Key k{.name = name, .type = Type::String, .required = required};
  if (!required) k.default_value = std::string();
  return k;
}

const config::Schema& schema() {
  static const config::Schema s = [] {
    config::Schema s;
    s.add({.name = "device", .type = Type::String, .default_value = std::string("auto"), .check = [](const Value& v) {
             const auto& d = std::get<std::string>(v);
             return d == "auto" || d == "cpu" || d == "mps" || d.starts_with("cuda") ? std::string() : "'" + d + "' is not a device";
           }});
    s.add(choice("dtype", "auto", {"auto", "fp32", "bf16", "fp16"}));
    s.add(integer("seed", 42, 0));
    s.add(choice("log_level", "info", {"trace", "debug", "info", "warn", "error", "off"}));
    s.add(text("model.path", true));
    s.add(choice("model.init", "pretrained", {"pretrained", "random"}));
    s.add(text("output", true));
    s.add(choice("method", "lora", {"lora", "full"}));
    for (const auto& name : peft::adapter_method_names()) peft::find_adapter_method(name)->add_config_keys(s);
    s.add({.name = "full.freeze", .type = Type::StringList, .default_value = std::vector<std::string>{}});
    s.add(text("data.path", true));
    s.add(choice("data.format", "auto", {"auto", "alpaca", "messages", "tools", "completion", "text"}));
    s.add(text("data.template"));
    s.add(choice("data.train_on", "assistant", {"assistant", "all"}));
    s.add(integer("data.max_seq_len", 2048, 8));
    s.add(choice("data.truncation", "truncate", {"truncate", "drop"}));
    s.add(flag("data.packing", true));
    s.add(number("data.val_fraction", 0.0, 0, 0.5));
    s.add(text("data.val_path"));
    s.add(flag("data.skip_bad_rows", false));
    s.add(integer("train.batch_size", 4, 1));
    s.add(integer("train.grad_accum_steps", 1, 1));
    s.add(integer("train.epochs", 1, 1));
    s.add({.name = "train.max_steps", .type = Type::Int, .default_value = int64_t{-1}, .min = -1,
           .check = [](const Value& v) { return std::get<int64_t>(v) == 0 ? std::string("must not be 0") : std::string(); }});
    s.add(number("train.lr", 2e-4, 0, {}, true));
    s.add(choice("train.lr_scheduler", "cosine", {"constant", "linear", "cosine"}));
    s.add(integer("train.warmup_steps", 0, 0));
    s.add(number("train.warmup_ratio", 0.0, 0, 1));
    s.add(number("train.weight_decay", 0.0, 0));
    s.add(number("train.max_grad_norm", 1.0, 0));
    s.add(number("train.adam_beta1", 0.9, 0, 0.999999));
    s.add(number("train.adam_beta2", 0.999, 0, 0.999999));
    s.add(number("train.adam_eps", 1e-8, 0, {}, true));
    s.add(integer("train.loss_chunk_rows", 0, -1));
    s.add(flag("train.grad_checkpointing", false));
    s.add(integer("eval.every_steps", 0, 0));
    s.add(integer("eval.max_batches", 0, 0));
    s.add(integer("checkpoint.every_steps", 0, 0));
    s.add(integer("checkpoint.keep", 2, 0));
    s.add(integer("log.every_steps", 10, 1));
    return s;
  }();
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init();
  (void)schema();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto parts = fuzz::split_at_nul({reinterpret_cast<const char*>(data), size}, 8);
  config::Sources sources;
  sources.file = "run.yaml";
  sources.yaml_text = std::string(parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) sources.overrides.emplace_back(parts[i]);
  fuzz::guarded([&] {
    const config::Config cfg = config::Config::resolve(schema(), sources);
    for (const auto& key : schema().keys()) {
      if (!cfg.has(key.name)) continue;
      (void)config::format_value(cfg.value(key.name));
      (void)cfg.origin(key.name).describe();
      switch (key.type) {
        case Type::Bool: (void)cfg.get_bool(key.name); break;
        case Type::Int: (void)cfg.get_int(key.name); break;
        case Type::Float: (void)cfg.get_float(key.name); break;
        case Type::String: (void)cfg.get_string(key.name); break;
        case Type::StringList: (void)cfg.get_list(key.name); break;
      }
    }
    (void)cfg.to_yaml(true);
    (void)cfg.to_yaml(false);
  });
  return 0;
}
