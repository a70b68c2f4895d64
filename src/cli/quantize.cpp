// `llmtune quantize`: parse, resolve the config, run the quantize pipeline (GGUF or bitsandbytes), report.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "command_params.h"
#include "common.h"
#include "llmtune/pipelines/quantize.h"
#include "llmtune/util/byte_size.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {

namespace {

const CommonUse kQuantizeUse{.seed = false, .why_not = "quantizing and evaluating draw nothing at random"};

struct QuantizeFlags {
  std::optional<std::string> model, adapter, output, type, name, eval_data, shard_size;
  std::optional<int64_t> max_seq_len, batch_size, blocksize;
  bool force = false, ollama = false, double_quant = false;
  // gptq / rtn
  std::optional<std::string> method, calibration, format;
  std::optional<int64_t> bits, group_size, calibration_samples, seq_len;
  std::optional<double> damp;
  bool sym = false, asym = false, act_order = false;
};

}  // namespace

config::Schema quantize_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String, .help = "model directory or Hugging Face cache repo id", .required = true});
  s.add({.name = "adapter", .type = Type::String, .help = "LoRA adapter folded in before quantizing"});
  s.add({.name = "output", .type = Type::String, .help = "the .gguf file (GGUF types) or directory (nf4, fp4, int8) to write",
         .required = true});
  s.add({.name = "type", .type = Type::String,
         .help = "GGUF tensor type or llama.cpp file mix, or a bitsandbytes type (nf4, fp4, int8: a Hugging Face directory)",
         .choices = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q4_k_m", "q4_k_s",
                     "q5_k_m", "q5_k_s", "nf4", "fp4", "int8"}});
  s.add({.name = "double_quant", .type = Type::Bool, .default_value = false,
         .help = "nf4/fp4: quantize the block scales too (bnb_4bit_use_double_quant)"});
  s.add({.name = "blocksize", .type = Type::Int, .help = "nf4/fp4: elements per block, a power of two in [32, 4096] (default 64)"});
  s.add({.name = "shard_size", .type = Type::String, .help = "nf4/fp4/int8: largest safetensors shard (default 5GB)"});
  s.add({.name = "name", .type = Type::String, .help = "GGUF types: general.name in the GGUF file (default: the directory name)"});
  s.add({.name = "ollama", .type = Type::Bool, .default_value = false, .help = "GGUF types: write an Ollama Modelfile next to the file"});
  s.add({.name = "force", .type = Type::Bool, .default_value = false, .help = "replace an existing output"});
  s.add({.name = "eval_data", .type = Type::String,
         .help = "evaluate source and result on this data (as eval's --data) and report the perplexity cost"});
  s.add({.name = "method", .type = Type::String,
         .help = "gptq (calibrated, Frantar et al.) or rtn (round-to-nearest): 2/4/8-bit integer codes in a GPTQ-format "
                 "Hugging Face directory (instead of --type)",
         .choices = {"gptq", "rtn"}});
  s.add({.name = "bits", .type = Type::Int, .help = "gptq/rtn: bits per weight, 2, 3, 4 or 8 (default 4)"});
  s.add({.name = "group_size", .type = Type::Int, .help = "gptq/rtn: input columns per scale and zero point, or -1 for one per row (default 128)"});
  s.add({.name = "sym", .type = Type::Bool, .help = "gptq/rtn: symmetric (true, the default) or asymmetric (false) quantizer"});
  s.add({.name = "act_order", .type = Type::Bool, .help = "gptq: columns in descending Hessian diagonal order, with static groups (desc_act)"});
  s.add({.name = "damp", .type = Type::Float, .help = "gptq: dampening, times the mean of the Hessian's diagonal (default 0.01)",
         .min = 0, .min_exclusive = true});
  s.add({.name = "calibration", .type = Type::String, .help = "gptq: calibration text (.txt, or .jsonl/.json rows in any finetune format)"});
  s.add({.name = "calibration_samples", .type = Type::Int, .help = "gptq: calibration sequences (default 128)", .min = 1});
  s.add({.name = "seq_len", .type = Type::Int, .help = "gptq: tokens per calibration sequence (default 2048)", .min = 2});
  s.add({.name = "format", .type = Type::String,
         .help = "gptq/rtn: the checkpoint format written: gptq (AutoGPTQ / gptqmodel) or compressed-tensors (pack-quantized, "
                 "llm-compressor / vLLM) (default gptq)",
         .choices = {"gptq", "compressed-tensors"}});
  s.add({.name = "max_seq_len", .type = Type::Int, .default_value = int64_t{512}, .help = "evaluation window / row length", .min = 2});
  s.add({.name = "batch_size", .type = Type::Int, .default_value = int64_t{8}, .help = "evaluation sequences per forward pass", .min = 1});
  return s;
}

namespace {

// --force, the evaluation keys and the device/dtype it runs in: every path of quantize has them.
void set_output_and_eval(pipelines::QuantizeParams& p, const config::Config& cfg,
                         const std::function<std::string(const char*)>& opt) {
  p.force = cfg.get_bool("force");
  p.eval_data = opt("eval_data");
  p.eval_max_seq_len = cfg.get_int("max_seq_len");
  p.eval_batch_size = cfg.get_int("batch_size");
  p.device = cfg.get_string("device");
  p.dtype = cfg.get_string("dtype");
}

void set_gptq(pipelines::QuantizeParams& p, const config::Config& cfg, const std::function<std::string(const char*)>& opt) {
  auto& g = p.gptq;
  g.method = cfg.get_string("method");
  g.gptq.quant.bits = cfg.has("bits") ? cfg.get_int("bits") : 4;
  g.gptq.quant.group_size = cfg.has("group_size") ? cfg.get_int("group_size") : 128;
  g.gptq.quant.sym = cfg.has("sym") ? cfg.get_bool("sym") : true;
  g.gptq.act_order = cfg.has("act_order") && cfg.get_bool("act_order");
  if (g.gptq.act_order && g.method != "gptq") throw ConfigError("act_order: applies to --method gptq only");
  if (cfg.has("damp") && g.method != "gptq") throw ConfigError("damp: applies to --method gptq only");
  for (const char* key : {"calibration_samples", "seq_len"})
    if (cfg.has(key) && g.method != "gptq") throw ConfigError(std::string(key) + ": applies to --method gptq only");
  if (g.gptq.quant.group_size == 0 || g.gptq.quant.group_size < -1)
    throw ConfigError("group_size: " + std::to_string(g.gptq.quant.group_size) + " (use a positive size or -1)");
  g.gptq.damp = cfg.has("damp") ? cfg.get_float("damp") : 0.01;
  g.format = cfg.has("format") ? cfg.get_string("format") : "gptq";
  g.calibration.path = opt("calibration");
  g.calibration.samples = cfg.has("calibration_samples") ? cfg.get_int("calibration_samples") : 128;
  g.calibration.seq_len = cfg.has("seq_len") ? cfg.get_int("seq_len") : 2048;
  set_output_and_eval(p, cfg, opt);
}

void print_gptq_result(const pipelines::QuantizeReport& r, bool json) {
  if (json) {
    nlohmann::ordered_json j{{"output", r.output.string()}, {"type", r.type}, {"bytes", r.bytes}, {"source_bytes", r.source_bytes},
                             {"calibration_sequences", r.gptq.calibration_sequences},
                             {"calibration_seq_len", r.gptq.calibration_seq_len}, {"quantize_seconds", r.gptq.quantize_seconds},
                             {"seconds", r.seconds}, {"peak_rss_bytes", r.peak_rss_bytes}, {"kept_tensors", r.gptq.kept}};
    j["layers"] = nlohmann::ordered_json::array();
    for (const auto& l : r.gptq.layers)
      j["layers"].push_back({{"module", l.path}, {"out", l.out}, {"in", l.in}, {"output_error", l.output_error}, {"damp", l.damp}});
    if (r.source_eval) {
      j["source_perplexity"] = r.source_eval->perplexity;
      j["quantized_perplexity"] = r.result_eval->perplexity;
      j["source_loss"] = r.source_eval->loss;
      j["quantized_loss"] = r.result_eval->loss;
      if (r.rtn_eval) j["rtn_perplexity"] = r.rtn_eval->perplexity, j["rtn_loss"] = r.rtn_eval->loss;
      j["eval_tokens"] = r.result_eval->tokens;
    }
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return;
  }
  std::cout << fmt::format("{} ({}, {:.1f} MB from {:.1f} MB, {} linears in {:.1f} s)\n", r.output.string(), r.type, r.bytes / 1e6,
                           r.source_bytes / 1e6, r.gptq.layers.size(), r.gptq.quantize_seconds);
  if (r.source_eval)
    std::cout << fmt::format("perplexity {:.4f} (source) → {:.4f} ({}): {:+.2f}%\n", r.source_eval->perplexity,
                             r.result_eval->perplexity, r.type, 100.0 * (r.result_eval->perplexity / r.source_eval->perplexity - 1.0));
  if (r.rtn_eval)
    std::cout << fmt::format("perplexity {:.4f} (rtn, the same bits and groups): {:+.2f}%\n", r.rtn_eval->perplexity,
                             100.0 * (r.rtn_eval->perplexity / r.source_eval->perplexity - 1.0));
}

}  // namespace

pipelines::QuantizeParams quantize_params(const config::Config& cfg) {
  auto opt = [&](const char* key) { return cfg.has(key) ? cfg.get_string(key) : std::string(); };
  pipelines::QuantizeParams p;
  p.model = cfg.get_string("model");
  p.adapter = opt("adapter");
  p.output = cfg.get_string("output");
  static const char* const kGptqKeys[] = {"bits", "group_size", "sym", "act_order", "damp", "calibration",
                                           "calibration_samples", "seq_len", "format"};
  if (cfg.has("method")) {
    if (cfg.has("type")) throw ConfigError("type and method are alternatives: --type writes GGUF or bitsandbytes, --method gptq|rtn a GPTQ directory");
    for (const char* key : {"double_quant", "blocksize", "shard_size", "name", "ollama"})
      if (cfg.has(key) && (std::string(key) != "double_quant" && std::string(key) != "ollama" ? true : cfg.get_bool(key)))
        throw ConfigError(std::string(key) + ": applies to --type, not --method " + cfg.get_string("method"));
    set_gptq(p, cfg, opt);
    return p;
  }
  for (const char* key : kGptqKeys)
    if (cfg.has(key)) throw ConfigError(std::string(key) + ": applies to --method gptq|rtn only (remove it, or set --method)");
  if (!cfg.has("type")) throw ConfigError("type: required (a GGUF or bitsandbytes type), or --method gptq|rtn");
  const std::string type = cfg.get_string("type");
  const bool bnb = pipelines::is_bnb_type(type);
  const bool four_bit = bnb && type != "int8";
  // Every option belongs to some types: given with another, it is refused, not ignored.
  auto refuse = [&](const char* key, bool given, const char* types) {
    if (given)
      throw ConfigError(std::string(key) + ": applies to " + types + " only, not --type " + type +
                        " (remove it, or choose such a type)");
  };
  refuse("double_quant", cfg.get_bool("double_quant") && !four_bit, "nf4 and fp4");
  refuse("blocksize", cfg.has("blocksize") && !four_bit, "nf4 and fp4");
  refuse("shard_size", cfg.has("shard_size") && !bnb, "nf4, fp4 and int8 (a GGUF file is one file)");
  refuse("name", cfg.has("name") && bnb, "GGUF types");
  refuse("ollama", cfg.get_bool("ollama") && bnb, "GGUF types");
  if (bnb) {
    p.bnb.type = type;
    p.bnb.double_quant = cfg.get_bool("double_quant");
    if (cfg.has("blocksize")) p.bnb.blocksize = cfg.get_int("blocksize");
    if (cfg.has("shard_size")) p.bnb.shard_size_bytes = parse_byte_size(cfg.get_string("shard_size"), "shard_size");
  } else {
    p.gguf.type = type;
    p.gguf.name = opt("name");
    p.gguf.ollama = cfg.get_bool("ollama");
  }
  set_output_and_eval(p, cfg, opt);
  return p;
}

Command register_quantize(CLI::App& root) {
  auto* app = root.add_subcommand(
      "quantize", "Quantize a model (+ adapter) to a GGUF file or a bitsandbytes directory, and report the perplexity cost");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<QuantizeFlags>();
  add_common_options(app, *options, kQuantizeUse);
  app->add_option("--model", flags->model, "model directory or HF cache repo id");
  app->add_option("--adapter", flags->adapter, "LoRA adapter folded in before quantizing");
  app->add_option("--output", flags->output, "the .gguf file (GGUF types) or directory (nf4, fp4, int8) to write");
  app->add_option("--type", flags->type,
                  "f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q5_k|q6_k|q4_k_m|q4_k_s|q5_k_m|q5_k_s (GGUF) or nf4|fp4|int8 (bitsandbytes)");
  app->add_flag("--double-quant", flags->double_quant, "nf4/fp4: quantize the block scales too");
  app->add_option("--blocksize", flags->blocksize, "nf4/fp4: elements per block, a power of two in [32, 4096] [64]");
  app->add_option("--shard-size", flags->shard_size, "nf4/fp4/int8: largest safetensors shard [5GB]");
  app->add_option("--name", flags->name, "general.name of the GGUF file");
  app->add_flag("--ollama", flags->ollama, "write an Ollama Modelfile next to the file");
  app->add_flag("--force", flags->force, "replace an existing output");
  app->add_option("--eval-data", flags->eval_data, "evaluate source and result on this data; report the perplexity cost");
  app->add_option("--max-seq-len", flags->max_seq_len, "evaluation window / row length in tokens [512]");
  app->add_option("--batch-size", flags->batch_size, "evaluation sequences per forward pass [8]");
  app->add_option("--method", flags->method, "gptq|rtn: integer codes with group scales in a GPTQ-format directory (instead of --type)");
  app->add_option("--bits", flags->bits, "gptq/rtn: 2, 3, 4 or 8 [4]");
  app->add_option("--group-size", flags->group_size, "gptq/rtn: input columns per scale, or -1 [128]");
  app->add_flag("--sym", flags->sym, "gptq/rtn: symmetric quantizer (the default)");
  app->add_flag("--asym", flags->asym, "gptq/rtn: asymmetric quantizer (a zero point per group)");
  app->add_flag("--act-order", flags->act_order, "gptq: quantize columns by descending Hessian diagonal (desc_act), static groups");
  app->add_option("--damp", flags->damp, "gptq: dampening, times the mean Hessian diagonal [0.01]");
  app->add_option("--calibration", flags->calibration, "gptq: calibration text (.txt or .jsonl)");
  app->add_option("--calibration-samples", flags->calibration_samples, "gptq: calibration sequences [128]");
  app->add_option("--seq-len", flags->seq_len, "gptq: tokens per calibration sequence [2048]");
  app->add_option("--format", flags->format, "gptq/rtn: gptq or compressed-tensors [gptq]");
  return {app, [options, flags] {
            FlagValues extra;
            add_flag_value(extra, "model", flags->model);
            add_flag_value(extra, "adapter", flags->adapter);
            add_flag_value(extra, "output", flags->output);
            add_flag_value(extra, "type", flags->type);
            add_flag_value(extra, "double_quant", flags->double_quant);
            add_flag_value(extra, "blocksize", flags->blocksize);
            add_flag_value(extra, "shard_size", flags->shard_size);
            add_flag_value(extra, "name", flags->name);
            add_flag_value(extra, "ollama", flags->ollama);
            add_flag_value(extra, "force", flags->force);
            add_flag_value(extra, "eval_data", flags->eval_data);
            add_flag_value(extra, "max_seq_len", flags->max_seq_len);
            add_flag_value(extra, "batch_size", flags->batch_size);
            add_flag_value(extra, "method", flags->method);
            add_flag_value(extra, "bits", flags->bits);
            add_flag_value(extra, "group_size", flags->group_size, "--group-size");
            if (flags->sym && flags->asym) throw UsageError("--sym and --asym are alternatives: give one");
            if (flags->sym || flags->asym) extra.push_back({"sym", flags->sym ? "true" : "false", flags->sym ? "--sym" : "--asym"});
            add_flag_value(extra, "act_order", flags->act_order);
            add_flag_value(extra, "damp", flags->damp);
            add_flag_value(extra, "calibration", flags->calibration);
            add_flag_value(extra, "calibration_samples", flags->calibration_samples, "--calibration-samples");
            add_flag_value(extra, "seq_len", flags->seq_len, "--seq-len");
            add_flag_value(extra, "format", flags->format);
            config::Config cfg = resolve_config(quantize_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            const pipelines::QuantizeParams p = quantize_params(cfg);
            if (!p.gptq.method.empty()) {
              print_gptq_result(pipelines::run_gptq_quantize(p), options->json);
              return 0;
            }
            const bool bnb = !p.bnb.type.empty();
            const std::string type = bnb ? p.bnb.type : p.gguf.type;
            const bool four_bit = bnb && type != "int8";
            auto r = pipelines::run_quantize(p);
            if (options->json) {
              nlohmann::ordered_json j{{"output", r.output.string()}, {"type", r.type}, {"bytes", r.bytes},
                                       {"source_bytes", r.source_bytes}};
              if (bnb) {
                j["file_type"] = type;
                j["double_quant"] = p.bnb.double_quant;
                j["blocksize"] = four_bit ? nlohmann::ordered_json(p.bnb.blocksize) : nlohmann::ordered_json();
                j["compute_dtype"] = r.bnb.compute_dtype;
                j["quantized_modules"] = r.bnb.quantized_modules;
                j["kept_tensors"] = r.bnb.kept_tensors;
                j["files"] = nlohmann::ordered_json::array();
                for (const auto& f : r.bnb.files) j["files"].push_back((r.output / f.filename()).string());
                j["export_seconds"] = r.bnb.seconds;
              } else {
                j["file_type"] = r.gguf.file_type;
                j["tensors_per_type"] = r.gguf.tensors_per_type;
                j["modelfile"] = r.gguf.modelfile.string();
                j["export_seconds"] = r.gguf.seconds;
              }
              j["seconds"] = r.seconds;
              j["peak_rss_bytes"] = r.peak_rss_bytes;
              if (r.source_eval) {
                j["source_perplexity"] = r.source_eval->perplexity;
                j["quantized_perplexity"] = r.result_eval->perplexity;
                j["source_loss"] = r.source_eval->loss;
                j["quantized_loss"] = r.result_eval->loss;
                if (!bnb) j["gguf_perplexity"] = r.result_eval->perplexity, j["gguf_loss"] = r.result_eval->loss;
                j["eval_tokens"] = r.result_eval->tokens;
              }
              std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            } else {
              const double seconds = bnb ? r.bnb.seconds : r.gguf.seconds;
              std::cout << fmt::format("{} ({}, {:.1f} MB from {:.1f} MB, {:.1f} s)\n", r.output.string(), r.type,
                                       r.bytes / 1e6, r.source_bytes / 1e6, seconds);
              if (bnb)
                std::cout << fmt::format("  {} linears quantized ({}{}), {} tensors kept as stored\n", r.bnb.quantized_modules,
                                         type, p.bnb.double_quant ? ", double quant" : "", r.bnb.kept_tensors);
              for (const auto& [t, n] : r.gguf.tensors_per_type) std::cout << fmt::format("  {:>6} {} tensors\n", t, n);
              if (r.source_eval)
                std::cout << fmt::format("perplexity {:.4f} (source) → {:.4f} ({}): {:+.2f}%\n", r.source_eval->perplexity,
                                         r.result_eval->perplexity, r.type,
                                         100.0 * (r.result_eval->perplexity / r.source_eval->perplexity - 1.0));
              if (!r.gguf.modelfile.empty()) std::cout << fmt::format("ollama Modelfile {}\n", r.gguf.modelfile.string());
            }
            return 0;
          }};
}

}  // namespace llmtune::cli
