// `llmtune quantize`: parse, resolve the config, run the quantize pipeline (GGUF types), report.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common.h"
#include "llmtune/pipelines/quantize.h"

namespace llmtune::cli {

namespace {

const CommonUse kQuantizeUse{.seed = false, .why_not = "quantizing and evaluating draw nothing at random"};

struct QuantizeFlags {
  std::optional<std::string> model, adapter, output, type, name, eval_data;
  std::optional<int64_t> max_seq_len, batch_size;
  bool force = false, ollama = false;
};

config::Schema quantize_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String, .help = "model directory or Hugging Face cache repo id", .required = true});
  s.add({.name = "adapter", .type = Type::String, .help = "LoRA adapter folded in before quantizing"});
  s.add({.name = "output", .type = Type::String, .help = "the .gguf file to write", .required = true});
  s.add({.name = "type", .type = Type::String, .help = "GGUF tensor type or llama.cpp file mix", .required = true,
         .choices = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q4_k_s",
                     "q5_k_m", "q5_k_s"}});
  s.add({.name = "name", .type = Type::String, .help = "general.name in the GGUF file (default: the directory name)"});
  s.add({.name = "ollama", .type = Type::Bool, .default_value = false, .help = "write an Ollama Modelfile next to the file"});
  s.add({.name = "force", .type = Type::Bool, .default_value = false, .help = "replace an existing output"});
  s.add({.name = "eval_data", .type = Type::String,
         .help = "evaluate source and result on this data (as eval's --data) and report the perplexity cost"});
  s.add({.name = "max_seq_len", .type = Type::Int, .default_value = int64_t{512}, .help = "evaluation window / row length", .min = 2});
  s.add({.name = "batch_size", .type = Type::Int, .default_value = int64_t{8}, .help = "evaluation sequences per forward pass", .min = 1});
  return s;
}

}  // namespace

Command register_quantize(CLI::App& root) {
  auto* app = root.add_subcommand("quantize", "Quantize a model (+ adapter) to a GGUF file, and report the perplexity cost");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<QuantizeFlags>();
  add_common_options(app, *options, kQuantizeUse);
  app->add_option("--model", flags->model, "model directory or HF cache repo id");
  app->add_option("--adapter", flags->adapter, "LoRA adapter folded in before quantizing");
  app->add_option("--output", flags->output, "the .gguf file to write");
  app->add_option("--type", flags->type, "f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q5_k|q6_k|q4_k_m|q4_k_s|q5_k_m|q5_k_s");
  app->add_option("--name", flags->name, "general.name of the GGUF file");
  app->add_flag("--ollama", flags->ollama, "write an Ollama Modelfile next to the file");
  app->add_flag("--force", flags->force, "replace an existing output");
  app->add_option("--eval-data", flags->eval_data, "evaluate source and result on this data; report the perplexity cost");
  app->add_option("--max-seq-len", flags->max_seq_len, "evaluation window / row length in tokens [512]");
  app->add_option("--batch-size", flags->batch_size, "evaluation sequences per forward pass [8]");
  return {app, [options, flags] {
            FlagValues extra;
            add_flag_value(extra, "model", flags->model);
            add_flag_value(extra, "adapter", flags->adapter);
            add_flag_value(extra, "output", flags->output);
            add_flag_value(extra, "type", flags->type);
            add_flag_value(extra, "name", flags->name);
            add_flag_value(extra, "ollama", flags->ollama);
            add_flag_value(extra, "force", flags->force);
            add_flag_value(extra, "eval_data", flags->eval_data);
            add_flag_value(extra, "max_seq_len", flags->max_seq_len);
            add_flag_value(extra, "batch_size", flags->batch_size);
            config::Config cfg = resolve_config(quantize_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            auto opt = [&](const char* key) { return cfg.has(key) ? cfg.get_string(key) : std::string(); };
            pipelines::QuantizeParams p;
            p.model = cfg.get_string("model");
            p.adapter = opt("adapter");
            p.output = cfg.get_string("output");
            p.gguf.type = cfg.get_string("type");
            p.gguf.name = opt("name");
            p.gguf.ollama = cfg.get_bool("ollama");
            p.force = cfg.get_bool("force");
            p.eval_data = opt("eval_data");
            p.eval_max_seq_len = cfg.get_int("max_seq_len");
            p.eval_batch_size = cfg.get_int("batch_size");
            p.device = cfg.get_string("device");
            p.dtype = cfg.get_string("dtype");
            auto r = pipelines::run_quantize(p);
            if (options->json) {
              nlohmann::ordered_json j{{"output", r.gguf.path.string()}, {"file_type", r.gguf.file_type},
                                       {"bytes", r.gguf.bytes}, {"source_bytes", r.source_bytes},
                                       {"tensors_per_type", r.gguf.tensors_per_type}, {"modelfile", r.gguf.modelfile.string()},
                                       {"export_seconds", r.gguf.seconds}, {"seconds", r.seconds},
                                       {"peak_rss_bytes", r.peak_rss_bytes}};
              if (r.source_eval) {
                j["source_perplexity"] = r.source_eval->perplexity;
                j["gguf_perplexity"] = r.gguf_eval->perplexity;
                j["source_loss"] = r.source_eval->loss;
                j["gguf_loss"] = r.gguf_eval->loss;
                j["eval_tokens"] = r.gguf_eval->tokens;
              }
              std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            } else {
              std::cout << fmt::format("{} ({}, {:.1f} MB from {:.1f} MB, {:.1f} s)\n", r.gguf.path.string(), r.gguf.file_type,
                                       r.gguf.bytes / 1e6, r.source_bytes / 1e6, r.gguf.seconds);
              for (const auto& [type, n] : r.gguf.tensors_per_type) std::cout << fmt::format("  {:>6} {} tensors\n", type, n);
              if (r.source_eval)
                std::cout << fmt::format("perplexity {:.4f} (source) → {:.4f} ({}): {:+.2f}%\n", r.source_eval->perplexity,
                                         r.gguf_eval->perplexity, r.gguf.file_type,
                                         100.0 * (r.gguf_eval->perplexity / r.source_eval->perplexity - 1.0));
              if (!r.gguf.modelfile.empty()) std::cout << fmt::format("ollama Modelfile {}\n", r.gguf.modelfile.string());
            }
            return 0;
          }};
}

}  // namespace llmtune::cli
