// `llmtune finetune`: the config schema (every key a user can set), flags as shorthands for keys,
// and the glue from the resolved config to FinetuneParams.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common.h"
#include "training.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {

config::Schema finetune_schema() {
  using config::Type;
  using config::Value;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model.path", .type = Type::String, .help = "base model: directory or Hugging Face cache repo id", .required = true});
  s.add({.name = "model.init", .type = Type::String, .default_value = std::string("pretrained"),
         .help = "pretrained: load the weights; random: transformers' init from config.json (full fine-tuning from scratch)",
         .choices = {"pretrained", "random"}});
  s.add({.name = "model.quantize", .type = Type::String, .default_value = std::string("auto"),
         .help = "quantize the frozen base while it loads: nf4 or fp4 (bitsandbytes' formats; lm_head, embeddings and norms "
                 "stay dense), none; auto: nf4 with method qlora, none otherwise",
         .choices = {"auto", "none", "nf4", "fp4"}});
  s.add({.name = "model.double_quant", .type = Type::Bool, .default_value = true,
         .help = "with model.quantize: double-quantize the block absmax (8-bit, blocks of 256), as QLoRA does"});
  s.add({.name = "model.quant_blocksize", .type = Type::Int, .default_value = int64_t{64},
         .help = "with model.quantize: weights per absmax block (a power of two, 32-4096)", .min = 32, .max = 4096});
  s.add({.name = "output", .type = Type::String, .help = "run directory (config.yaml, adapter/ or model/, checkpoints/, metrics.jsonl, tb/, loss.svg, summary.json, train.log)", .required = true});
  // `method`: every registered adapter method (each adds its own config section) or full.
  std::vector<std::string> methods = peft::adapter_method_names();
  std::string method_help;
  for (const auto& name : methods) method_help += peft::find_adapter_method(name)->help + ", ";
  methods.push_back("qlora");
  methods.push_back("full");
  s.add({.name = "method", .type = Type::String, .default_value = std::string("lora"),
         .help = method_help + "qlora (lora over a base quantized to 4 bits while it loads: model.quantize nf4 with "
                 "double quant unless set; compute in --dtype, bf16 on CUDA and fp32 on CPU by default) or full fine-tuning",
         .choices = methods});
  for (const auto& name : peft::adapter_method_names()) peft::find_adapter_method(name)->add_config_keys(s);
  s.add({.name = "full.freeze", .type = Type::StringList, .default_value = std::vector<std::string>{},
         .help = "method full: regular expressions of weight names kept frozen (e.g. embed_tokens, 'layers\\.[0-3]\\.')"});

  s.add({.name = "data.path", .type = Type::String, .help = "training data: .jsonl or .json (array of rows)", .required = true});
  s.add({.name = "data.format", .type = Type::String, .default_value = std::string("auto"), .help = "row format",
         .choices = {"auto", "alpaca", "messages", "tools", "completion", "text"}});
  s.add({.name = "data.template", .type = Type::String, .default_value = std::string("auto"),
         .help = kChatTemplateHelp, .check = check_chat_template});
  s.add({.name = "data.train_on", .type = Type::String, .default_value = std::string("assistant"),
         .help = "assistant: loss on assistant responses (+ their end-of-turn token) only; all: every token", .choices = {"assistant", "all"}});
  s.add({.name = "data.max_seq_len", .type = Type::Int, .default_value = int64_t{2048}, .help = "tokens per example / packed row", .min = 8});
  s.add({.name = "data.truncation", .type = Type::String, .default_value = std::string("truncate"),
         .help = "rows longer than max_seq_len: truncate or drop (counted in the log)", .choices = {"truncate", "drop"}});
  s.add({.name = "data.packing", .type = Type::Bool, .default_value = true,
         .help = "pack examples into max_seq_len rows (block-diagonal attention, positions restart per example)"});
  s.add({.name = "data.val_fraction", .type = Type::Float, .default_value = 0.0, .help = "seeded fraction of data.path held out for validation", .min = 0, .max = 0.5});
  s.add({.name = "data.val_path", .type = Type::String, .default_value = std::string(""), .help = "a separate validation file (instead of val_fraction)"});
  s.add({.name = "data.skip_bad_rows", .type = Type::Bool, .default_value = false,
         .help = "skip and count malformed rows instead of stopping with an error"});

  s.add({.name = "train.batch_size", .type = Type::Int, .default_value = int64_t{4}, .help = "rows per micro-batch", .min = 1});
  s.add({.name = "train.grad_accum_steps", .type = Type::Int, .default_value = int64_t{1}, .help = "micro-batches per optimizer step", .min = 1});
  s.add({.name = "train.epochs", .type = Type::Int, .default_value = int64_t{1}, .help = "passes over the training data", .min = 1});
  s.add({.name = "train.max_steps", .type = Type::Int, .default_value = int64_t{-1}, .help = "optimizer steps; > 0 overrides epochs", .min = -1,
         .check = [](const Value& v) { return std::get<int64_t>(v) == 0 ? std::string("must be -1 (use epochs) or a positive step count") : std::string(); }});
  s.add({.name = "train.lr", .type = Type::Float, .default_value = 2e-4, .help = "peak learning rate", .min = 0, .min_exclusive = true});
  s.add({.name = "train.lr_scheduler", .type = Type::String, .default_value = std::string("cosine"), .help = "LR schedule after warmup",
         .choices = {"constant", "linear", "cosine"}});
  s.add({.name = "train.warmup_steps", .type = Type::Int, .default_value = int64_t{0}, .help = "linear warmup steps", .min = 0});
  s.add({.name = "train.warmup_ratio", .type = Type::Float, .default_value = 0.0, .help = "warmup as a fraction of the steps (when warmup_steps is 0)", .min = 0, .max = 1});
  s.add({.name = "train.weight_decay", .type = Type::Float, .default_value = 0.0, .help = "AdamW decoupled weight decay (not on norms and biases)", .min = 0});
  s.add({.name = "train.max_grad_norm", .type = Type::Float, .default_value = 1.0, .help = "clip the global gradient norm; 0 disables", .min = 0});
  s.add({.name = "train.adam_beta1", .type = Type::Float, .default_value = 0.9, .help = "AdamW beta1", .min = 0, .max = 0.999999});
  s.add({.name = "train.adam_beta2", .type = Type::Float, .default_value = 0.999, .help = "AdamW beta2", .min = 0, .max = 0.999999});
  s.add({.name = "train.adam_eps", .type = Type::Float, .default_value = 1e-8, .help = "AdamW epsilon", .min = 0, .min_exclusive = true});
  s.add({.name = "train.loss_chunk_rows", .type = Type::Int, .default_value = int64_t{0},
         .help = "trained positions per chunk of the LM head + loss (0: auto, at most 64 MiB of fp32 logits; -1: unchunked, the full logits)",
         .min = -1});
  s.add({.name = "train.grad_checkpointing", .type = Type::Bool, .default_value = false,
         .help = "recompute each decoder layer in backward (less memory, ~30% more compute)"});

  s.add({.name = "eval.every_steps", .type = Type::Int, .default_value = int64_t{0}, .help = "evaluate on the validation data every N steps (0: at the end only)", .min = 0});
  s.add({.name = "eval.max_batches", .type = Type::Int, .default_value = int64_t{0}, .help = "validation batches per evaluation (0: all)", .min = 0});
  s.add({.name = "checkpoint.every_steps", .type = Type::Int, .default_value = int64_t{0}, .help = "checkpoint every N steps (0: at the end only)", .min = 0});
  s.add({.name = "checkpoint.keep", .type = Type::Int, .default_value = int64_t{2}, .help = "newest checkpoints kept (0: all)", .min = 0});
  s.add({.name = "log.every_steps", .type = Type::Int, .default_value = int64_t{10}, .help = "log-line interval when stderr is not a terminal", .min = 1});
  return s;
}

namespace {

// ", base nf4: its quantized linears in 3.35 GiB instead of 13.0 GiB in 16 bits (9.65 GiB saved)"; "" for a 16-bit base.
std::string quantization_text(const nlohmann::json& summary) {
  const nlohmann::json q = summary.value("quantization", nlohmann::json::object());
  if (q.value("type", std::string("none")) == "none") return "";
  auto size = [&](const char* key) {
    const double b = static_cast<double>(q.value(key, int64_t{0}));
    return b >= (1 << 30) ? fmt::format("{:.2f} GiB", b / (1 << 30)) : fmt::format("{:.2f} MiB", b / (1 << 20));
  };
  return fmt::format(", base {}: its quantized linears in {} instead of {} in 16 bits ({} saved)", q["type"].get<std::string>(),
                     size("quantized_bytes_held"), size("quantized_bytes_16bit"), size("bytes_saved"));
}

}  // namespace

void print_training_summary(const nlohmann::json& summary, bool json) {
  if (json) std::cout << summary.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  else if (!summary.value("interrupted", false))
    std::cout << fmt::format("done: {} steps, final loss {:.4f}{}, {:.0f} tokens/s{} -> {}\n", summary["steps"].get<int64_t>(),
                             summary["final_loss"].get<double>(),
                             summary["eval_loss"].is_null() ? "" : fmt::format(", eval loss {:.4f}", summary["eval_loss"].get<double>()),
                             summary["tokens_per_second"].get<double>(), quantization_text(summary),
                             summary["output"].get<std::string>());
}

pipelines::FinetuneParams read_finetune_params(const config::Config& cfg) {
  pipelines::FinetuneParams p;
  p.model = cfg.get_string("model.path");
  p.model_init = cfg.get_string("model.init");
  p.output = cfg.get_string("output");
  p.method = cfg.get_string("method");
  p.quantize = cfg.get_string("model.quantize");
  p.double_quant = cfg.get_bool("model.double_quant");
  p.quant_blocksize = cfg.get_int("model.quant_blocksize");
  p.freeze = cfg.get_list("full.freeze");

  p.data.path = cfg.get_string("data.path");
  p.data.format = cfg.get_string("data.format");
  p.data.chat_template = cfg.get_string("data.template");
  p.data.train_on = cfg.get_string("data.train_on");
  p.data.max_seq_len = cfg.get_int("data.max_seq_len");
  p.data.truncation = cfg.get_string("data.truncation");
  p.data.val_fraction = cfg.get_float("data.val_fraction");
  p.data.val_path = cfg.get_string("data.val_path");
  p.data.skip_bad_rows = cfg.get_bool("data.skip_bad_rows");
  p.packing = cfg.get_bool("data.packing");

  p.batch_size = cfg.get_int("train.batch_size");
  p.grad_accum_steps = cfg.get_int("train.grad_accum_steps");
  p.epochs = cfg.get_int("train.epochs");
  p.max_steps = cfg.get_int("train.max_steps");
  p.lr = cfg.get_float("train.lr");
  p.lr_scheduler = cfg.get_string("train.lr_scheduler");
  p.warmup_steps = cfg.get_int("train.warmup_steps");
  p.warmup_ratio = cfg.get_float("train.warmup_ratio");
  p.adam.weight_decay = cfg.get_float("train.weight_decay");
  p.adam.beta1 = cfg.get_float("train.adam_beta1");
  p.adam.beta2 = cfg.get_float("train.adam_beta2");
  p.adam.eps = cfg.get_float("train.adam_eps");
  p.max_grad_norm = cfg.get_float("train.max_grad_norm");
  p.gradient_checkpointing = cfg.get_bool("train.grad_checkpointing");
  p.loss_chunk_rows = cfg.get_int("train.loss_chunk_rows");
  p.eval_every_steps = cfg.get_int("eval.every_steps");
  p.eval_max_batches = cfg.get_int("eval.max_batches");
  p.checkpoint_every_steps = cfg.get_int("checkpoint.every_steps");
  p.checkpoint_keep = cfg.get_int("checkpoint.keep");
  p.log_every_steps = cfg.get_int("log.every_steps");
  p.seed = static_cast<uint64_t>(cfg.get_int("seed"));
  p.data.seed = p.seed;
  p.device = cfg.get_string("device");
  p.dtype = cfg.get_string("dtype");
  return p;
}

pipelines::FinetuneParams finetune_params(const config::Config& cfg, const config::Schema& schema) {
  pipelines::FinetuneParams p = read_finetune_params(cfg);
  // QLoRA: LoRA over a 4-bit base, nf4 + double quant (QLoRA's defaults) unless model.* says otherwise;
  // auto is resolved against the model directory (a bitsandbytes checkpoint loads as stored).
  if (p.method == "qlora" && p.quantize == "none")
    throw ConfigError("model.quantize: none (" + cfg.origin("model.quantize").describe() +
                      ") but method qlora trains over a 4-bit base: set model.quantize: nf4 or fp4, or method: lora");
  const bool four_bit = p.quantize == "nf4" || p.quantize == "fp4" || (p.quantize == "auto" && p.method == "qlora");
  if (four_bit && p.model_init == "random")
    throw ConfigError((p.method == "qlora" ? "method qlora" : "model.quantize: " + p.quantize) +
                      " quantizes pretrained weights: it does not go with model.init: random");
  if (p.quant_blocksize & (p.quant_blocksize - 1))
    throw ConfigError("model.quant_blocksize: " + std::to_string(p.quant_blocksize) + " is not a power of two");
  if (four_bit && p.method == "full")
    throw ConfigError("model.quantize: " + p.quantize + " freezes the base in 4 bits: it needs an adapter method (lora, qlora), not full");
  if (!four_bit)
    for (const char* key : {"model.double_quant", "model.quant_blocksize"})
      if (cfg.value(key) != *schema.find(key)->default_value)
        throw ConfigError(std::string(key) + " is set (" + cfg.origin(key).describe() +
                          ") but the base is not quantized: set model.quantize: nf4 or fp4 (or method: qlora), or remove it");
  if (p.method != "full") p.adapter = peft::find_adapter_method(p.method == "qlora" ? "lora" : p.method)->from_config(cfg);
  // Settings of a method that is not the one chosen would be silently ignored: refuse them.
  std::vector<std::string> sections = peft::adapter_method_names();
  sections.push_back("full");
  // (A saved config.yaml lists every key at its default: only values that differ count.)
  for (const auto& section : sections) {
    if (section == p.method || (p.method == "qlora" && section == "lora")) continue;
    for (const auto& key : schema.keys()) {
      if (!key.name.starts_with(section + ".") || !cfg.has(key.name) || !key.default_value) continue;
      if (cfg.value(key.name) != *key.default_value)
        throw ConfigError(key.name + " is set (" + cfg.origin(key.name).describe() + ") but method is " +
                          p.method + ": remove it, or set method: " + section);
    }
  }
  if (p.model_init == "random" && p.method != "full")
    throw ConfigError("model.init: random needs method: full (an adapter on random weights learns nothing useful)");
  if (p.data.val_fraction > 0 && !p.data.val_path.empty())
    throw ConfigError("data.val_fraction and data.val_path are alternatives: set one");
  return p;
}

void add_training_flags(CLI::App* app, TrainingFlags& flags, const char* model_help) {
  app->add_option("--model", flags.model, model_help);
  app->add_option("--data", flags.data, "training data .jsonl/.json (data.path)");
  app->add_option("--output", flags.output, "run directory (output)");
  app->add_option("--max-steps", flags.max_steps, "optimizer steps (train.max_steps)");
  flags.resume_option = app->add_option("--resume", flags.resume, "continue from a checkpoint: the latest in output/checkpoints, or the given step directory");
  flags.resume_option->expected(0, 1);
  flags.force_option = app->add_flag("--force", flags.force, "start over in an output directory that holds a run: its checkpoints, results, metrics and log are removed first");
}

FlagValues training_flag_values(TrainingFlags& flags, CommonOptions& options) {
  if (flags.resume && flags.resume->find('=') != std::string::npos && !std::filesystem::exists(*flags.resume)) {
    options.positionals.push_back(*flags.resume);
    flags.resume = std::string();
  }
  FlagValues extra;
  add_flag_value(extra, "model.path", flags.model, "--model");
  add_flag_value(extra, "data.path", flags.data, "--data");
  add_flag_value(extra, "output", flags.output);
  add_flag_value(extra, "train.max_steps", flags.max_steps, "--max-steps");
  return extra;
}

void run_training(pipelines::FinetuneParams p, const config::Config& cfg, const TrainingFlags& flags, bool json) {
  p.resume = flags.resume_option->count() > 0;
  p.force = flags.force_option->count() > 0;
  if (p.resume && p.force)
    throw UsageError("--resume continues the run in " + p.output.string() + ", --force starts it over: give one of them");
  if (flags.resume && !flags.resume->empty()) p.resume_from = *flags.resume;
  p.config_yaml = "# llmtune " + p.command + ": the resolved configuration of this run\n" + cfg.to_yaml();
  p.quiet = json;
  print_training_summary(pipelines::run_finetune(p), json);
}

Command register_finetune(CLI::App& root) {
  auto* app = root.add_subcommand("finetune", "LoRA / DoRA / QLoRA / full fine-tuning on instruction, chat, function-calling or text data");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<TrainingFlags>();
  add_common_options(app, *options);
  add_training_flags(app, *flags, "base model (model.path)");
  return {app, [options, flags] {
            config::Config cfg = resolve_config(finetune_schema(), *options, training_flag_values(*flags, *options));
            if (print_config_if_asked(cfg, *options)) return 0;
            run_training(finetune_params(cfg, finetune_schema()), cfg, *flags, options->json);
            return 0;
          }};
}

}  // namespace llmtune::cli
