// `llmtune merge`: parse, resolve the config, run the merge pipeline, report.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "common.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/util/byte_size.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {

namespace {

const CommonUse kMergeUse{.device = false, .seed = false,
                          .why_not = "merge folds the adapter in on the CPU, tensor by tensor, and draws nothing at random"};

struct MergeFlags {
  std::optional<std::string> model, adapter, output, shard_size, gguf, gguf_type, name, lora_gguf, lora_gguf_type, quantize;
  std::optional<int64_t> blocksize;
  bool force = false, ollama = false, refuse_non_finite = false, double_quant = false;
};

const std::vector<std::string>& gguf_type_choices() {
  static const std::vector<std::string> choices{"auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0",
                                                "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s"};
  return choices;
}

config::Schema merge_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String,
         .help = "base model directory or Hugging Face cache repo id (default: the adapter's base_model_name_or_path)"});
  s.add({.name = "adapter", .type = Type::String, .help = "PEFT adapter directory, or a finetune run directory", .required = true});
  s.add({.name = "output", .type = Type::String,
         .help = "merged Hugging Face directory (default: <run>/merged or <adapter>-merged, unless only GGUF outputs are asked for)"});
  s.add({.name = "shard_size", .type = Type::String, .default_value = std::string("5GB"),
         .help = "largest safetensors shard (5GB, 500MB, 2GiB, bytes)"});
  s.add({.name = "force", .type = Type::Bool, .default_value = false, .help = "replace existing outputs"});
  s.add({.name = "refuse_non_finite", .type = Type::Bool, .default_value = false, .help = "refuse an adapter holding NaN or infinite values (default: a warning naming its tensors)"});
  s.add({.name = "gguf", .type = Type::String, .help = "also write the merged model as this .gguf file"});
  s.add({.name = "gguf_type", .type = Type::String, .default_value = std::string("auto"),
         .help = "GGUF tensor type or llama.cpp mix (auto: BF16 for a bf16 model, else F16)", .choices = gguf_type_choices()});
  s.add({.name = "name", .type = Type::String, .help = "general.name in the GGUF file (default: the directory name)"});
  s.add({.name = "ollama", .type = Type::Bool, .default_value = false,
         .help = "write an Ollama Modelfile (template, stop tokens) next to the GGUF file"});
  s.add({.name = "lora_gguf", .type = Type::String, .help = "also write the adapter alone as a llama.cpp GGUF LoRA file"});
  s.add({.name = "quantize", .type = Type::String,
         .help = "write the merged directory as a bitsandbytes checkpoint of this type instead of 16-bit shards",
         .choices = {"nf4", "fp4", "int8"}});
  s.add({.name = "double_quant", .type = Type::Bool, .default_value = false,
         .help = "with quantize nf4/fp4: quantize the block scales too (bnb_4bit_use_double_quant)"});
  s.add({.name = "blocksize", .type = Type::Int,
         .help = "with quantize nf4/fp4: elements per block, a power of two in [32, 4096] (default 64)"});
  s.add({.name = "lora_gguf_type", .type = Type::String, .default_value = std::string("f16"),
         .help = "tensor type of the GGUF LoRA file", .choices = {"f32", "f16", "bf16", "q8_0"}});
  return s;
}

}  // namespace

Command register_merge(CLI::App& root) {
  auto* app = root.add_subcommand(
      "merge", "Fold a LoRA/DoRA adapter into its base (dense or bitsandbytes): a Hugging Face directory and/or GGUF");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<MergeFlags>();
  add_common_options(app, *options, kMergeUse);
  app->get_option("--dtype")->description("dtype of the merged weights: auto (the base's)|fp32|bf16|fp16");
  app->add_option("--model", flags->model, "base model directory or HF cache repo id [the adapter's base_model_name_or_path]");
  app->add_option("--adapter", flags->adapter, "PEFT adapter directory, or a finetune run directory");
  app->add_option("--output", flags->output, "merged Hugging Face directory [<run>/merged or <adapter>-merged]");
  app->add_option("--shard-size", flags->shard_size, "largest safetensors shard [5GB]");
  app->add_flag("--force", flags->force, "replace existing outputs");
  app->add_flag("--refuse-non-finite", flags->refuse_non_finite, "refuse an adapter holding NaN or infinite values (default: a warning naming its tensors)");
  app->add_option("--gguf", flags->gguf, "also write the merged model as this .gguf file");
  app->add_option("--gguf-type", flags->gguf_type, "GGUF type: auto|f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q5_k|q6_k|q4_k_m|q4_k_s|q5_k_m|q5_k_s [auto]");
  app->add_option("--name", flags->name, "general.name of the GGUF file");
  app->add_flag("--ollama", flags->ollama, "write an Ollama Modelfile next to the GGUF file");
  app->add_option("--lora-gguf", flags->lora_gguf, "also write the adapter alone as a llama.cpp GGUF LoRA file");
  app->add_option("--lora-gguf-type", flags->lora_gguf_type, "f32|f16|bf16|q8_0 [f16]");
  app->add_option("--quantize", flags->quantize, "write the merged directory as bitsandbytes nf4|fp4|int8 instead of 16-bit");
  app->add_flag("--double-quant", flags->double_quant, "with --quantize nf4/fp4: quantize the block scales too");
  app->add_option("--blocksize", flags->blocksize, "with --quantize nf4/fp4: elements per block [64]");
  return {app, [options, flags] {
            FlagValues extra;
            add_flag_value(extra, "model", flags->model);
            add_flag_value(extra, "adapter", flags->adapter);
            add_flag_value(extra, "output", flags->output);
            add_flag_value(extra, "shard_size", flags->shard_size);
            add_flag_value(extra, "force", flags->force);
            add_flag_value(extra, "refuse_non_finite", flags->refuse_non_finite);
            add_flag_value(extra, "gguf", flags->gguf);
            add_flag_value(extra, "gguf_type", flags->gguf_type);
            add_flag_value(extra, "name", flags->name);
            add_flag_value(extra, "ollama", flags->ollama);
            add_flag_value(extra, "lora_gguf", flags->lora_gguf);
            add_flag_value(extra, "lora_gguf_type", flags->lora_gguf_type);
            add_flag_value(extra, "quantize", flags->quantize);
            add_flag_value(extra, "double_quant", flags->double_quant);
            add_flag_value(extra, "blocksize", flags->blocksize);
            config::Config cfg = resolve_config(merge_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            auto opt = [&](const char* key) { return cfg.has(key) ? cfg.get_string(key) : std::string(); };
            pipelines::MergeParams p;
            p.model = opt("model");
            p.adapter = cfg.get_string("adapter");
            p.output = opt("output");
            const std::string dtype = cfg.get_string("dtype");
            p.dtype = dtype == "auto" ? "" : dtype;
            p.shard_size_bytes = parse_byte_size(cfg.get_string("shard_size"), "shard_size");
            p.force = cfg.get_bool("force");
            p.refuse_non_finite = cfg.get_bool("refuse_non_finite");
            p.gguf = opt("gguf");
            p.gguf_options.type = cfg.get_string("gguf_type");
            p.gguf_options.name = opt("name");
            p.gguf_options.ollama = cfg.get_bool("ollama");
            if (p.gguf_options.ollama && p.gguf.empty()) throw ConfigError("ollama: needs --gguf (the Modelfile points at the GGUF file)");
            p.lora_gguf = opt("lora_gguf");
            p.lora_gguf_type = cfg.get_string("lora_gguf_type");
            p.quantize.type = opt("quantize");
            const bool four_bit = p.quantize.type == "nf4" || p.quantize.type == "fp4";
            if (cfg.get_bool("double_quant") && !four_bit)
              throw ConfigError("double_quant: applies to --quantize nf4 or fp4 only (remove it, or choose such a type)");
            if (cfg.has("blocksize") && !four_bit)
              throw ConfigError("blocksize: applies to --quantize nf4 or fp4 only (remove it, or choose such a type)");
            p.quantize.double_quant = cfg.get_bool("double_quant");
            if (cfg.has("blocksize")) p.quantize.blocksize = cfg.get_int("blocksize");
            auto r = pipelines::run_merge(p);
            if (options->json) {
              nlohmann::ordered_json j{{"model", r.model_dir.string()}, {"adapter", r.adapter_dir.string()},
                                       {"output", r.output.string()}, {"dtype", r.dtype}, {"tensors", r.tensors},
                                       {"adapter_modules", r.adapter_modules}, {"unchanged_modules", r.unchanged_modules},
                                       {"zero_b_modules", r.zero_b_modules},
                                       {"base_quantization", r.base_quantization.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.base_quantization)},
                                       {"dequantized_modules", r.dequantized_modules},
                                       {"quantize", r.quantize.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(r.quantize)},
                                       {"merge_seconds", r.merge_seconds},
                                       {"seconds", r.seconds}, {"peak_rss_bytes", r.peak_rss_bytes}};
              j["files"] = nlohmann::json::array();
              for (const auto& f : r.files) j["files"].push_back(f.string());
              if (!r.gguf.empty())
                j["gguf"] = {{"path", r.gguf.string()}, {"bytes", r.gguf_report.bytes}, {"file_type", r.gguf_report.file_type},
                             {"tensors_per_type", r.gguf_report.tensors_per_type}, {"seconds", r.gguf_report.seconds},
                             {"modelfile", r.gguf_report.modelfile.string()}};
              if (!r.lora_gguf.empty()) j["lora_gguf"] = r.lora_gguf.string();
              std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            } else {
              if (!r.base_quantization.empty())
                std::cout << fmt::format("dequantized {} {} linears of the base\n", r.dequantized_modules, r.base_quantization);
              if (!r.output.empty())
                std::cout << fmt::format("merged {} adapter modules into {} tensors → {} ({}, {} file(s))\n", r.adapter_modules,
                                         r.tensors, r.output.string(), r.quantize.empty() ? r.dtype : "bitsandbytes " + r.quantize,
                                         r.files.size());
              if (!r.quantize.empty() && !r.base_quantization.empty())
                std::cout << fmt::format("note: the {} output is not bit-equal to the {} base the adapter was trained on\n",
                                         r.quantize, r.base_quantization);
              if (!r.gguf.empty())
                std::cout << fmt::format("gguf {} ({}, {:.1f} MB)\n", r.gguf.string(), r.gguf_report.file_type, r.gguf_report.bytes / 1e6);
              if (!r.gguf_report.modelfile.empty()) std::cout << fmt::format("ollama Modelfile {}\n", r.gguf_report.modelfile.string());
              if (!r.lora_gguf.empty()) std::cout << fmt::format("lora gguf {}\n", r.lora_gguf.string());
              std::cout << fmt::format("{:.1f} s, peak RSS {:.2f} GiB\n", r.seconds, r.peak_rss_bytes / 1073741824.0);
            }
            return 0;
          }};
}

}  // namespace llmtune::cli
