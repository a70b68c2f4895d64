// `llmtune infer`: parse, resolve the config, run the infer pipeline.
#include <CLI/CLI.hpp>

#include <spdlog/spdlog.h>

#include <iostream>
#include <memory>

#include "common.h"
#include "llmtune/pipelines/infer.h"

namespace llmtune::cli {
namespace {

config::Schema infer_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String, .help = "model directory or Hugging Face cache repo id", .required = true});
  s.add({.name = "adapter", .type = Type::String, .help = "LoRA adapter directory"});
  s.add({.name = "prompt", .type = Type::String, .help = "one prompt"});
  s.add({.name = "prompts_file", .type = Type::String, .help = "JSONL with \"prompt\" or \"messages\" per row"});
  s.add({.name = "output", .type = Type::String, .help = "JSONL output for prompts_file"});
  s.add({.name = "chat", .type = Type::Bool, .default_value = false, .help = "interactive chat"});
  s.add({.name = "raw", .type = Type::Bool, .default_value = false, .help = "no chat template"});
  add_quantize_on_load_keys(s, "", "blocksize");
  s.add({.name = "refuse_non_finite", .type = Type::Bool, .default_value = false, .help = "refuse weights or adapter tensors holding NaN or infinite values (default: a warning naming them)"});
  s.add({.name = "system", .type = Type::String, .help = "system prompt"});
  s.add({.name = "max_new_tokens", .type = Type::Int, .default_value = int64_t{256}, .help = "tokens to generate at most", .min = 1});
  s.add({.name = "temperature", .type = Type::Float, .default_value = 0.0, .help = "0 = greedy", .min = 0});
  s.add({.name = "top_k", .type = Type::Int, .default_value = int64_t{0}, .help = "0 = off", .min = 0});
  s.add({.name = "top_p", .type = Type::Float, .default_value = 1.0, .help = "1 = off", .min = 0, .max = 1, .min_exclusive = true});
  s.add({.name = "min_p", .type = Type::Float, .default_value = 0.0, .help = "0 = off", .min = 0, .max = 1});
  s.add({.name = "repetition_penalty", .type = Type::Float, .default_value = 1.0, .help = "1 = off", .min = 0, .min_exclusive = true});
  s.add({.name = "stop", .type = Type::StringList, .default_value = std::vector<std::string>{}, .help = "stop strings"});
  return s;
}

struct InferFlags {
  std::optional<std::string> model, adapter, prompt, prompts_file, output, system;
  std::optional<int64_t> max_new_tokens, top_k;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::vector<std::string> stop;
  bool chat = false, raw = false, refuse_non_finite = false;
  LoadQuantizeFlags quantize;
};

}  // namespace

Command register_infer(CLI::App& root) {
  auto* app = root.add_subcommand("infer", "Generate text: one prompt, a prompts file (JSONL in/out) or an interactive chat");
  auto options = std::make_shared<CommonOptions>();
  auto f = std::make_shared<InferFlags>();
  add_common_options(app, *options);
  app->add_option("--model", f->model, "model directory or Hugging Face cache repo id (org/name)");
  app->add_option("--adapter", f->adapter, "LoRA adapter directory");
  app->add_option("--prompt", f->prompt, "one prompt (streamed to stdout)");
  app->add_option("--prompts-file", f->prompts_file, "JSONL: {\"prompt\": ...} or {\"messages\": [...]} per line");
  app->add_option("--output", f->output, "JSONL written for --prompts-file");
  app->add_flag("--chat", f->chat, "interactive chat on stdin (/reset, /exit)");
  app->add_flag("--raw", f->raw, "no chat template: the prompt as is, with the tokenizer's BOS");
  add_quantize_on_load_flags(app, f->quantize);
  app->add_flag("--refuse-non-finite", f->refuse_non_finite, "refuse weights or adapter tensors holding NaN or infinite values (default: a warning naming them)");
  app->add_option("--system", f->system, "system prompt for chat-templated prompts");
  app->add_option("--max-new-tokens", f->max_new_tokens, "tokens to generate at most [256]");
  app->add_option("--temperature", f->temperature, "sampling temperature; 0 = greedy [0]");
  app->add_option("--top-k", f->top_k, "keep the k most likely tokens; 0 = off [0]");
  app->add_option("--top-p", f->top_p, "nucleus sampling; 1 = off [1]");
  app->add_option("--min-p", f->min_p, "drop tokens below min_p × the top probability; 0 = off [0]");
  app->add_option("--repetition-penalty", f->repetition_penalty, "penalise tokens already seen; 1 = off [1]");
  app->add_option("--stop", f->stop, "stop string (repeatable)");
  return {app, [options, f] {
            FlagValues extra;
            auto put = [&](const char* key, const auto& v) { add_flag_value(extra, key, v); };
            put("model", f->model);
            put("adapter", f->adapter);
            put("prompt", f->prompt);
            put("prompts_file", f->prompts_file);
            put("output", f->output);
            put("system", f->system);
            add_quantize_on_load_values(extra, f->quantize);
            put("max_new_tokens", f->max_new_tokens);
            put("top_k", f->top_k);
            put("temperature", f->temperature);
            put("top_p", f->top_p);
            put("min_p", f->min_p);
            put("repetition_penalty", f->repetition_penalty);
            add_flag_value(extra, "chat", f->chat);
            add_flag_value(extra, "raw", f->raw);
            add_flag_value(extra, "refuse_non_finite", f->refuse_non_finite);
            if (!f->stop.empty()) {
              nlohmann::json list = f->stop;
              extra.push_back({"stop", list.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "--stop"});
            }
            config::Config cfg = resolve_config(infer_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            auto opt = [&](const char* k) { return cfg.has(k) ? cfg.get_string(k) : std::string(); };
            pipelines::InferParams p;
            p.model = cfg.get_string("model");
            p.adapter = opt("adapter");
            if (cfg.has("prompt")) p.prompt = cfg.get_string("prompt");
            p.prompts_file = opt("prompts_file");
            p.output = opt("output");
            p.system = opt("system");
            p.chat = cfg.get_bool("chat");
            p.raw = cfg.get_bool("raw");
            p.refuse_non_finite = cfg.get_bool("refuse_non_finite");
            p.quantize = quantize_on_load(cfg, "", "blocksize");
            p.stop = cfg.get_list("stop");
            p.sampling.max_new_tokens = cfg.get_int("max_new_tokens");
            p.sampling.temperature = cfg.get_float("temperature");
            p.sampling.top_k = cfg.get_int("top_k");
            p.sampling.top_p = cfg.get_float("top_p");
            p.sampling.min_p = cfg.get_float("min_p");
            p.sampling.repetition_penalty = cfg.get_float("repetition_penalty");
            p.sampling.seed = static_cast<uint64_t>(cfg.get_int("seed"));
            // Greedy decoding (temperature 0) draws nothing: say so for each sampling setting given.
            if (p.sampling.temperature == 0.0) {
              for (const char* key : {"seed", "top_k", "top_p", "min_p"})
                if (cfg.origin(key).kind != config::Origin::Kind::Default)
                  spdlog::warn("infer: {} has no effect with temperature 0 (greedy decoding); set a temperature to sample", key);
            }
            p.device = cfg.get_string("device");
            p.dtype = cfg.get_string("dtype");
            p.json = options->json;
            pipelines::run_infer(p, std::cout, std::cin);
            return 0;
          }};
}

}  // namespace llmtune::cli
