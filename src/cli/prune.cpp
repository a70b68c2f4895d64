// `llmtune prune`: parse, resolve the config (refusing a setting of another kind of method), run
// the prune pipeline, print a one-screen summary (or the report as JSON) and the fine-tune that
// recovers quality.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <memory>

#include "command_params.h"
#include "common.h"
#include "llmtune/pipelines/prune.h"
#include "llmtune/util/byte_size.h"
#include "llmtune/util/error.h"

namespace llmtune::cli {

namespace {

struct PruneFlags {
  std::optional<std::string> model, output, method, pattern, scope, skip, calibration, eval_data, shard_size, layer_metric,
      drop_layers;
  std::optional<double> sparsity;
  std::optional<int64_t> calibration_samples, seq_len, eval_max_seq_len, eval_batch_size, remove_layers, num_attention_heads,
      num_key_value_heads, intermediate_size;
  bool force = false;
};

}  // namespace

config::Schema prune_schema() {
  using config::Type;
  config::Schema s;
  add_common_keys(s);
  s.add({.name = "model", .type = Type::String, .help = "model directory or Hugging Face cache repo id", .required = true});
  s.add({.name = "output", .type = Type::String, .help = "the pruned Hugging Face directory to write", .required = true});
  s.add({.name = "method", .type = Type::String, .help = "magnitude | wanda | sparsegpt (unstructured, N:M) | layers | width (structured)", .required = true,
         .choices = pipelines::prune_methods()});
  s.add({.name = "sparsity", .type = Type::Float, .default_value = 0.5,
         .help = "fraction of each linear's weights to zero, in [0, 1) (unless pattern is given)",
         .check = [](const config::Value& v) -> std::string {
           const double x = std::get<double>(v);
           return x >= 0.0 && x < 1.0 ? "" : fmt::format("{:g} is outside [0, 1) (the fraction of weights to zero)", x);
         }});
  s.add({.name = "pattern", .type = Type::String, .help = "N:M semi-structured sparsity instead: keep N of every M input weights (2:4, 4:8)",
         .check = [](const config::Value& v) -> std::string {
           try {
             pipelines::parse_nm_pattern(std::get<std::string>(v), "pattern");
             return "";
           } catch (const ConfigError& e) {
             return std::string(e.what()).substr(9);  // without the leading "pattern: "
           }
         }});
  s.add({.name = "scope", .type = Type::String, .default_value = std::string("row"),
         .help = "magnitude: compare weights within each output row, or within the whole layer", .choices = {"row", "layer"}});
  s.add({.name = "skip", .type = Type::StringList, .default_value = std::vector<std::string>{},
         .help = "linear modules left dense: a path or its tail ('mlp.down_proj'); embeddings and lm_head never are pruned"});
  s.add({.name = "calibration", .type = Type::String,
         .help = "calibration text for wanda and sparsegpt: .txt, or .jsonl/.json rows (text or a finetune format)"});
  s.add({.name = "calibration_samples", .type = Type::Int, .default_value = int64_t{128}, .help = "calibration sequences", .min = 1});
  s.add({.name = "seq_len", .type = Type::Int, .default_value = int64_t{0},
         .help = "tokens per calibration sequence (0: min(512, the model's positions))", .min = 0});
  s.add({.name = "damp", .type = Type::Float, .default_value = 0.01, .help = "sparsegpt: Hessian damping, times its mean diagonal",
         .min = 0.0, .min_exclusive = true});
  s.add({.name = "block_size", .type = Type::Int, .default_value = int64_t{128}, .help = "sparsegpt: columns per lazy update block", .min = 1});
  s.add({.name = "remove_layers", .type = Type::Int, .help = "layers: remove this many decoder layers, chosen by layer_metric", .min = 1});
  s.add({.name = "layer_metric", .type = Type::String, .default_value = std::string("bi"),
         .help = "layers: bi (ShortGPT Block Influence, the lowest K) or angular (Gromov et al., the contiguous block of K)",
         .choices = {"bi", "angular"}});
  s.add({.name = "drop_layers", .type = Type::String, .help = "layers: remove these layers instead ('20-23,5', 0-based)"});
  s.add({.name = "num_attention_heads", .type = Type::Int, .help = "width: query heads kept in every layer", .min = 1});
  s.add({.name = "num_key_value_heads", .type = Type::Int, .help = "width: KV heads kept in every layer (whole GQA groups)", .min = 1});
  s.add({.name = "intermediate_size", .type = Type::Int, .help = "width: MLP channels kept in every layer", .min = 1});
  s.add({.name = "eval_data", .type = Type::String, .help = "report perplexity before and after on this data (as eval's --data)"});
  s.add({.name = "eval_max_seq_len", .type = Type::Int, .default_value = int64_t{512}, .help = "evaluation window / row length", .min = 2});
  s.add({.name = "eval_batch_size", .type = Type::Int, .default_value = int64_t{8}, .help = "evaluation sequences per forward pass", .min = 1});
  s.add({.name = "shard_size", .type = Type::String, .default_value = std::string("5GB"), .help = "largest safetensors shard"});
  s.add({.name = "force", .type = Type::Bool, .default_value = false, .help = "replace an existing output directory"});
  return s;
}

namespace {

// Settings that only one kind of method reads: given with another, they are refused, not ignored.
void check_method_keys(const config::Config& cfg, const std::string& method) {
  auto given = [&](const char* key) { return cfg.has(key) && cfg.origin(key).kind != config::Origin::Kind::Default; };
  const bool structured = method == "layers" || method == "width";
  for (const char* key : {"sparsity", "pattern", "scope", "skip"})
    if (structured && given(key))
      throw UsageError(std::string(key) + ": applies to magnitude, wanda and sparsegpt, not to --method " + method + " (remove it)");
  for (const char* key : {"damp", "block_size"})
    if (method != "sparsegpt" && given(key)) throw UsageError(std::string(key) + ": applies to --method sparsegpt only (remove it)");
  for (const char* key : {"remove_layers", "layer_metric", "drop_layers"})
    if (method != "layers" && given(key)) throw UsageError(std::string(key) + ": applies to --method layers only (remove it)");
  for (const char* key : {"num_attention_heads", "num_key_value_heads", "intermediate_size"})
    if (method != "width" && given(key)) throw UsageError(std::string(key) + ": applies to --method width only (remove it)");
}

void print_summary(const pipelines::PruneReport& r) {
  std::cout << fmt::format("pruned {} with {} ({}) → {}\n", r.model_dir.string(), r.method, r.target, r.output.string());
  const double pct = 100.0 / static_cast<double>(std::max<int64_t>(1, r.parameters));
  if (r.structured) {
    std::cout << fmt::format("parameters {} → {} ({:.1f}%) · {:.1f} MB → {:.1f} MB on disk\n", r.parameters, r.parameters_after,
                             r.parameters_after * pct, r.bytes_before / 1e6, r.bytes / 1e6);
    if (r.structured->layer_scores) {
      std::string bi;
      for (double v : r.structured->layer_scores->block_influence) bi += fmt::format(" {:.4f}", v);
      std::cout << "block influence per layer:" << bi << "\n";
    }
  } else {
    std::cout << fmt::format("parameters {} · non-zero {} ({:.1f}%) → {} ({:.1f}%) · {:.1f} MB on disk (dense layout)\n",
                             r.parameters, r.nonzero_before, r.nonzero_before * pct, r.nonzero_after, r.nonzero_after * pct,
                             r.bytes / 1e6);
    for (const auto& t : pipelines::sparsity_by_type(r))
      std::cout << fmt::format("  {:<20} {:5.1f}% zeros\n", t.type, 100.0 * static_cast<double>(t.zeros) / static_cast<double>(t.weights));
    if (!r.skipped.empty()) std::cout << fmt::format("  {} module(s) left dense (skip)\n", r.skipped.size());
  }
  if (r.calibration_sequences > 0)
    std::cout << fmt::format("calibration {} × {} tokens\n", r.calibration_sequences, r.calibration_seq_len);
  if (r.eval_before && r.eval_after)
    std::cout << fmt::format("perplexity {:.4f} → {:.4f} ({:+.2f}%)\n", r.eval_before->perplexity, r.eval_after->perplexity,
                             100.0 * (r.eval_after->perplexity / r.eval_before->perplexity - 1.0));
  std::cout << fmt::format("{:.1f} s (pruning {:.1f} s), peak memory {:.2f} GiB; report {}\n", r.seconds, r.prune_seconds,
                           r.peak_memory_bytes / 1073741824.0, (r.output / "prune_report.json").string());
  std::cout << "recover quality with a short fine-tune:\n  " << r.recovery_command << "\n";
}

}  // namespace

pipelines::PruneParams prune_params(const config::Config& cfg) {
  auto opt = [&](const char* key) { return cfg.has(key) ? cfg.get_string(key) : std::string(); };
  pipelines::PruneParams p;
  p.model = cfg.get_string("model");
  p.output = cfg.get_string("output");
  p.method = cfg.get_string("method");
  check_method_keys(cfg, p.method);
  p.sparsity = cfg.get_float("sparsity");
  p.pattern = opt("pattern");
  if (!p.pattern.empty() && cfg.origin("sparsity").kind != config::Origin::Kind::Default)
    throw UsageError("give --sparsity or --pattern, not both (" + p.pattern + " prunes " +
                     fmt::format("{:g}", 100.0 * pipelines::parse_nm_pattern(p.pattern, "pattern").sparsity) + "%)");
  p.scope = cfg.get_string("scope");
  p.skip = cfg.get_list("skip");
  p.calibration = opt("calibration");
  p.calibration_samples = cfg.get_int("calibration_samples");
  p.seq_len = cfg.get_int("seq_len");
  p.seed = static_cast<uint64_t>(cfg.get_int("seed"));
  p.damp = cfg.get_float("damp");
  p.block_size = cfg.get_int("block_size");
  auto opt_int = [&](const char* key) { return cfg.has(key) ? cfg.get_int(key) : int64_t{0}; };
  p.remove_layers = opt_int("remove_layers");
  p.layer_metric = cfg.get_string("layer_metric");
  p.drop_layers = opt("drop_layers");
  p.num_attention_heads = opt_int("num_attention_heads");
  p.num_key_value_heads = opt_int("num_key_value_heads");
  p.intermediate_size = opt_int("intermediate_size");
  p.eval_data = opt("eval_data");
  p.eval_max_seq_len = cfg.get_int("eval_max_seq_len");
  p.eval_batch_size = cfg.get_int("eval_batch_size");
  p.device = cfg.get_string("device");
  p.dtype = cfg.get_string("dtype");
  p.shard_size_bytes = parse_byte_size(cfg.get_string("shard_size"), "shard_size");
  p.force = cfg.get_bool("force");
  return p;
}

Command register_prune(CLI::App& root) {
  auto* app = root.add_subcommand("prune", "Prune a model (magnitude, Wanda, SparseGPT; unstructured or N:M; or whole layers, heads and MLP channels) to a Hugging Face directory");
  auto options = std::make_shared<CommonOptions>();
  auto flags = std::make_shared<PruneFlags>();
  add_common_options(app, *options);
  app->get_option("--seed")->description("seed of the calibration windows [42]");
  app->add_option("--model", flags->model, "model directory or HF cache repo id");
  app->add_option("--output", flags->output, "the pruned Hugging Face directory to write");
  app->add_option("--method", flags->method, "magnitude|wanda|sparsegpt (unstructured) or layers|width (structured)");
  app->add_option("--sparsity", flags->sparsity, "fraction of weights to zero, in [0, 1) [0.5]");
  app->add_option("--pattern", flags->pattern, "N:M sparsity instead (2:4, 4:8)");
  app->add_option("--scope", flags->scope, "magnitude: row|layer [row]");
  app->add_option("--skip", flags->skip, "linear modules left dense, comma-separated ('mlp.down_proj,model.layers.0.self_attn.q_proj')");
  app->add_option("--calibration", flags->calibration, "calibration text (.txt, .jsonl, .json) for wanda and sparsegpt");
  app->add_option("--calibration-samples", flags->calibration_samples, "calibration sequences [128]");
  app->add_option("--seq-len", flags->seq_len, "tokens per calibration sequence [min(512, model positions)]");
  app->add_option("--remove-layers", flags->remove_layers, "layers: remove K decoder layers chosen by --layer-metric");
  app->add_option("--layer-metric", flags->layer_metric, "layers: bi|angular [bi]");
  app->add_option("--drop-layers", flags->drop_layers, "layers: remove these layers ('20-23,5', 0-based)");
  app->add_option("--num-attention-heads", flags->num_attention_heads, "width: query heads kept per layer");
  app->add_option("--num-key-value-heads", flags->num_key_value_heads, "width: KV heads kept per layer");
  app->add_option("--intermediate-size", flags->intermediate_size, "width: MLP channels kept per layer");
  app->add_option("--eval-data", flags->eval_data, "report perplexity before and after on this data");
  app->add_option("--eval-max-seq-len", flags->eval_max_seq_len, "evaluation window / row length [512]");
  app->add_option("--eval-batch-size", flags->eval_batch_size, "evaluation sequences per forward pass [8]");
  app->add_option("--shard-size", flags->shard_size, "largest safetensors shard [5GB]");
  app->add_flag("--force", flags->force, "replace an existing output directory");
  return {app, [options, flags] {
            FlagValues extra;
            add_flag_value(extra, "model", flags->model);
            add_flag_value(extra, "output", flags->output);
            add_flag_value(extra, "method", flags->method);
            add_flag_value(extra, "sparsity", flags->sparsity);
            add_flag_value(extra, "pattern", flags->pattern);
            add_flag_value(extra, "scope", flags->scope);
            if (flags->skip) extra.push_back({"skip", "[" + *flags->skip + "]", "--skip"});
            add_flag_value(extra, "calibration", flags->calibration);
            add_flag_value(extra, "calibration_samples", flags->calibration_samples);
            add_flag_value(extra, "seq_len", flags->seq_len);
            add_flag_value(extra, "remove_layers", flags->remove_layers);
            add_flag_value(extra, "layer_metric", flags->layer_metric);
            add_flag_value(extra, "drop_layers", flags->drop_layers);
            add_flag_value(extra, "num_attention_heads", flags->num_attention_heads);
            add_flag_value(extra, "num_key_value_heads", flags->num_key_value_heads);
            add_flag_value(extra, "intermediate_size", flags->intermediate_size);
            add_flag_value(extra, "eval_data", flags->eval_data);
            add_flag_value(extra, "eval_max_seq_len", flags->eval_max_seq_len);
            add_flag_value(extra, "eval_batch_size", flags->eval_batch_size);
            add_flag_value(extra, "shard_size", flags->shard_size);
            add_flag_value(extra, "force", flags->force);
            config::Config cfg = resolve_config(prune_schema(), *options, extra);
            if (print_config_if_asked(cfg, *options)) return 0;
            const pipelines::PruneParams p = prune_params(cfg);
            auto r = pipelines::run_prune(p);
            if (options->json) std::cout << pipelines::prune_report_json(r, p);
            else print_summary(r);
            return 0;
          }};
}

}  // namespace llmtune::cli
