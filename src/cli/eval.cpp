// `llmtune eval`: parse, resolve the config, run the eval pipeline, report.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "command_params.h"
#include "common.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/eval.h"

namespace llmtune::cli {

namespace {

const CommonUse kEvalUse{.seed = false, .why_not = "eval scores every token, it draws nothing at random"};

struct EvalFlags {
  std::optional<std::string> model, adapter, data, format, chat_template;
  std::optional<int64_t> max_seq_len, batch_size;
  bool refuse_non_finite = false;
  LoadQuantizeFlags quantize;
};

}  // namespace

config::Schema eval_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String, .help = "model directory or Hugging Face cache repo id", .required = true});
  s.add({.name = "adapter", .type = Type::String, .help = "LoRA adapter directory"});
  s.add({.name = "data", .type = Type::String, .help = ".txt, or .jsonl/.json rows: \"text\", or instruction/chat rows (assistant tokens scored)", .required = true});
  s.add({.name = "format", .type = Type::String, .default_value = std::string("auto"),
         .help = "row format of .jsonl data (as finetune's data.format)", .choices = {"auto", "alpaca", "messages", "tools", "completion", "text"}});
  s.add({.name = "template", .type = Type::String, .default_value = std::string("auto"),
         .help = std::string(kChatTemplateHelp) + ", for instruction/chat rows (as finetune's data.template; auto: the "
                 "one saved with --adapter, else the tokenizer's)",
         .check = check_chat_template});
  s.add({.name = "max_seq_len", .type = Type::Int, .default_value = int64_t{2048}, .help = "window / row length in tokens", .min = 2});
  s.add({.name = "batch_size", .type = Type::Int, .default_value = int64_t{8}, .help = "sequences per forward pass", .min = 1});
  add_quantize_on_load_keys(s, "", "blocksize");
  s.add({.name = "refuse_non_finite", .type = Type::Bool, .default_value = false, .help = "refuse weights or adapter tensors holding NaN or infinite values (default: a warning naming them)"});
  return s;
}

pipelines::EvalParams eval_params(const config::Config& cfg) {
  pipelines::EvalParams p;
  p.model = cfg.get_string("model");
  // Resolved here so that a wrong path is called an adapter, not a model.
  p.adapter = cfg.has("adapter") ? peft::resolve_adapter_dir(cfg.get_string("adapter")).string() : "";
  p.data = cfg.get_string("data");
  p.format = cfg.get_string("format");
  p.chat_template = cfg.get_string("template");
  p.max_seq_len = cfg.get_int("max_seq_len");
  p.batch_size = cfg.get_int("batch_size");
  p.refuse_non_finite = cfg.get_bool("refuse_non_finite");
  p.quantize = quantize_on_load(cfg, "", "blocksize");
  p.device = cfg.get_string("device");
  p.dtype = cfg.get_string("dtype");
  return p;
}

Command register_eval(CLI::App& root) {
  auto* app = root.add_subcommand("eval", "Loss and perplexity of a model on a dataset (.txt, or .jsonl text / instruction / chat rows)");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<EvalFlags>();
  add_common_options(app, *options, kEvalUse);
  app->add_option("--model", flags->model, "model directory or Hugging Face cache repo id (org/name)");
  app->add_option("--adapter", flags->adapter, "LoRA adapter directory");
  app->add_option("--data", flags->data, "evaluation data: .txt, or .jsonl/.json rows (\"text\", or finetune's instruction/chat formats: assistant tokens scored)");
  app->add_option("--format", flags->format, "row format of .jsonl data: auto|alpaca|messages|tools|completion|text");
  app->add_option("--template", flags->chat_template,
                  "chat template for instruction/chat rows: auto|alpaca|chatml|llama3|mistral|zephyr|FILE.jinja");
  app->add_option("--max-seq-len", flags->max_seq_len, "window (.txt) or truncation (.jsonl) length in tokens [2048]");
  app->add_option("--batch-size", flags->batch_size, "sequences per forward pass [8]");
  add_quantize_on_load_flags(app, flags->quantize);
  app->add_flag("--refuse-non-finite", flags->refuse_non_finite, "refuse weights or adapter tensors holding NaN or infinite values (default: a warning naming them)");
  return {app, [options, flags] {
            FlagValues extra;
            add_flag_value(extra, "model", flags->model);
            add_flag_value(extra, "adapter", flags->adapter);
            add_flag_value(extra, "data", flags->data);
            add_flag_value(extra, "format", flags->format);
            add_flag_value(extra, "template", flags->chat_template);
            add_flag_value(extra, "max_seq_len", flags->max_seq_len);
            add_flag_value(extra, "batch_size", flags->batch_size);
            add_flag_value(extra, "refuse_non_finite", flags->refuse_non_finite);
            add_quantize_on_load_values(extra, flags->quantize);
            config::Config cfg = resolve_config(eval_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            const pipelines::EvalParams p = eval_params(cfg);
            auto r = pipelines::run_eval(p);
            if (options->json) {
              nlohmann::ordered_json j{{"loss", r.loss}, {"perplexity", r.perplexity}, {"tokens", r.tokens},
                                       {"sequences", r.sequences}, {"load_seconds", r.load_seconds},
                                       {"eval_seconds", r.eval_seconds}, {"tokens_per_second", r.tokens_per_second},
                                       {"device", r.device}, {"dtype", r.dtype}};
              std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            } else {
              std::cout << fmt::format("loss {:.6f}  perplexity {:.4f}  tokens {}  sequences {}  ({:.1f} tokens/s on {}, {})\n",
                                       r.loss, r.perplexity, r.tokens, r.sequences, r.tokens_per_second, r.device, r.dtype);
            }
            return 0;
          }};
}

}  // namespace llmtune::cli
