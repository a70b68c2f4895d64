// `llmtune prune`, written out: check every input, load the model, read the calibration text,
// evaluate the source when asked, prune the decoder layers' linears (layer by layer on the
// calibration sequences for wanda and sparsegpt) or choose the layers / heads / channels to keep
// (structured), then stage the Hugging Face directory (tensors renamed and sliced for structured
// methods, config.json following), evaluate it, add prune_report.json and move it into place.
#include "llmtune/pipelines/prune.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/pipelines/calibration.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;

// "mlp.down_proj" names every layer's down_proj; a full path names one module.
bool skip_matches(const std::string& path, const std::string& entry) {
  return path == entry || (path.size() > entry.size() && path.ends_with(entry) && path[path.size() - entry.size() - 1] == '.');
}

int64_t count_zeros(const at::Tensor& t) { return (t == 0).sum().item<int64_t>(); }

int64_t count_nonzero(model::CausalLM& m) {
  int64_t n = 0;
  for (const auto& [name, t] : m.named_weights()) n += t->numel() - count_zeros(*t);
  return n;
}

bool is_structured(const std::string& method) { return method == "layers" || method == "width"; }

bool needs_calibration(const PruneParams& p) {
  return p.method == "wanda" || p.method == "sparsegpt" || p.method == "width" || (p.method == "layers" && p.drop_layers.empty());
}

// The structured settings against the model's shape (before anything is loaded).
void check_structured(const PruneParams& p, const model::ModelConfig& c) {
  if (p.method == "layers") {
    if ((p.remove_layers > 0) == !p.drop_layers.empty())
      throw ConfigError("remove_layers: give --remove-layers K (chosen by --layer-metric) or --drop-layers LIST, exactly one");
    if (p.layer_metric != "bi" && p.layer_metric != "angular")
      throw ConfigError("layer_metric: '" + p.layer_metric + "' is not bi or angular");
    if (!p.drop_layers.empty() && p.layer_metric != "bi")
      throw ConfigError("layer_metric: chooses the layers of --remove-layers; --drop-layers names them itself (remove one)");
    const int64_t k = p.drop_layers.empty() ? p.remove_layers : static_cast<int64_t>(parse_layer_list(p.drop_layers, c.n_layers, "drop_layers").size());
    if (k >= c.n_layers)
      throw ConfigError((p.drop_layers.empty() ? "remove_layers: " : "drop_layers: ") + std::string("removing ") + std::to_string(k) +
                        " of the model's " + std::to_string(c.n_layers) + " layers leaves none; remove at most " +
                        std::to_string(c.n_layers - 1));
    return;
  }
  if (p.num_attention_heads == 0 && p.num_key_value_heads == 0 && p.intermediate_size == 0)
    throw ConfigError("method: width needs --num-attention-heads, --num-key-value-heads and/or --intermediate-size (the new counts)");
  if (p.num_attention_heads < 0 || p.num_key_value_heads < 0 || p.intermediate_size < 0)
    throw ConfigError("num_attention_heads: head and channel counts must be positive");
  resolve_head_counts(c, p.num_attention_heads, p.num_key_value_heads);
  if (p.intermediate_size > c.intermediate_size)
    throw ConfigError("intermediate_size: " + std::to_string(p.intermediate_size) + " is more than the model's " +
                      std::to_string(c.intermediate_size) + " MLP channels");
}

void check_inputs(const PruneParams& p, const SparsityTarget& target, const fs::path& model_dir) {
  const auto& methods = prune_methods();
  if (std::find(methods.begin(), methods.end(), p.method) == methods.end())
    throw ConfigError("method: '" + p.method + "' is not a pruning method: use magnitude, wanda, sparsegpt, layers or width");
  if (p.scope != "row" && p.scope != "layer") throw ConfigError("scope: '" + p.scope + "' is not row or layer");
  if (p.scope == "layer" && (p.method != "magnitude" || target.is_nm()))
    throw ConfigError("scope: layer applies to unstructured magnitude pruning only (wanda compares within rows, "
                      "sparsegpt within blocks of columns, N:M within groups of a row)");
  if (p.method == "sparsegpt" && target.is_nm() && p.block_size % target.m != 0)
    throw ConfigError("pattern: M=" + std::to_string(target.m) + " must divide sparsegpt's block size " +
                      std::to_string(p.block_size));
  std::error_code ec;
  if (p.output.empty()) throw ConfigError("output: required (the Hugging Face directory to write)");
  if (fs::exists(p.output, ec) && !p.force)
    throw ConfigError(p.output.string() + ": the output directory already exists (pass --force to replace it)");
  if (io::same_or_inside(p.output, model_dir) || io::same_or_inside(model_dir, p.output))
    throw ConfigError(p.output.string() + ": the output would overwrite the model " + model_dir.string() + "; choose another path");
  const auto config = io::read_json_file<ModelLoadError>(model_dir / "config.json", "config.json");
  if (config.contains("quantization_config"))
    throw ModelLoadError((model_dir / "config.json").string() +
                         ": the model is quantized (quantization_config); prune its full-precision original");
  if (is_structured(p.method)) check_structured(p, model::ModelConfig::load(model_dir));
  if (needs_calibration(p) && p.calibration.empty())
    throw ConfigError("calibration: required for --method " + p.method + " (text to calibrate on: a .txt or .jsonl file)");
  for (const auto& [key, file] : {std::pair{"calibration", p.calibration}, {"eval_data", p.eval_data}}) {
    if (file.empty()) continue;
    if (!fs::exists(file, ec)) throw ConfigError(std::string(key) + ": '" + file + "' does not exist");
    if (fs::is_directory(file, ec)) throw ConfigError(std::string(key) + ": '" + file + "' is a directory, not a data file");
  }
}

// Structured: the scores on the calibration sequences (when given) and what the pruned model keeps.
StructuredResult plan_structured(model::CausalLM& model, const PruneParams& p, const at::Tensor& ids) {
  const model::ModelConfig& c = model.config();
  StructuredResult r;
  r.n_layers_before = c.n_layers;
  r.n_heads_before = c.n_heads;
  r.n_heads_kv_before = c.n_heads_kv;
  r.intermediate_before = c.intermediate_size;
  if (p.method == "width") {
    r.width_scores = score_width(model, ids);
    r.plan = plan_width(*r.width_scores, c, p.num_attention_heads, p.num_key_value_heads, p.intermediate_size);
    return r;
  }
  const std::vector<int64_t> named = p.drop_layers.empty() ? std::vector<int64_t>{} : parse_layer_list(p.drop_layers, c.n_layers, "drop_layers");
  const int64_t k = named.empty() ? p.remove_layers : static_cast<int64_t>(named.size());
  if (ids.defined()) r.layer_scores = score_layers(model, ids, k);
  r.removed_layers = named.empty() ? layers_to_remove(*r.layer_scores, p.layer_metric, k) : named;
  r.layer_metric = named.empty() ? p.layer_metric : "named";
  for (int64_t l = 0; l < c.n_layers; ++l)
    if (std::find(r.removed_layers.begin(), r.removed_layers.end(), l) == r.removed_layers.end()) r.plan.layers.push_back(l);
  r.plan.n_heads = c.n_heads;
  r.plan.n_heads_kv = c.n_heads_kv;
  r.plan.intermediate_size = c.intermediate_size;
  return r;
}

std::string describe_structured(const PruneParams& p, const model::ModelConfig& c, const StructuredResult& r) {
  if (p.method == "layers") {
    std::string list;
    for (int64_t l : r.removed_layers) list += (list.empty() ? "" : ",") + std::to_string(l);
    return fmt::format("layers {} → {} (removed {} by {})", c.n_layers, r.plan.layers.size(), list, r.layer_metric);
  }
  return fmt::format("heads {}→{}, kv heads {}→{}, intermediate {}→{}", c.n_heads, r.plan.n_heads, c.n_heads_kv, r.plan.n_heads_kv,
                     c.intermediate_size, r.plan.intermediate_size);
}

}  // namespace

const std::vector<std::string>& prune_methods() {
  static const std::vector<std::string> methods{"magnitude", "wanda", "sparsegpt", "layers", "width"};
  return methods;
}

PruneReport run_prune(const PruneParams& p) {
  const auto t0 = SteadyClock::now();
  PruneReport report;
  SparsityTarget target;
  if (!p.pattern.empty()) {
    target = parse_nm_pattern(p.pattern, "pattern");
  } else {
    if (!(p.sparsity >= 0.0 && p.sparsity < 1.0))
      throw ConfigError("sparsity: " + fmt::format("{:g}", p.sparsity) + " is outside [0, 1) (the fraction of weights to zero)");
    target.sparsity = p.sparsity;
  }
  if (p.model.ends_with(".gguf")) throw ConfigError("model: prune reads a Hugging Face directory, not a GGUF file");
  report.model_dir = io::resolve_model_dir(p.model);
  check_inputs(p, target, report.model_dir);
  const bool structured = is_structured(p.method);
  // Named layers with calibration text: their scores are reported, though they choose nothing.
  const bool calibrated = needs_calibration(p) || (structured && !p.calibration.empty());
  if (!calibrated && !p.calibration.empty())
    spdlog::warn("prune: --calibration has no effect for magnitude (it scores the weights alone)");
  report.method = p.method;
  report.target = structured ? "" : target.describe();
  report.scope = structured ? "" : p.method == "magnitude" ? p.scope : p.method == "wanda" ? "row" : "block";

  LoadedModel loaded = load_model("prune", report.model_dir.string(), "", p.device, p.dtype);
  model::CausalLM& model = *loaded.model;
  report.device = loaded.device.device.str();
  report.dtype = dtype_name(loaded.dtype.dtype);
  const int64_t max_positions = model.config().max_position_embeddings;
  const int64_t seq_len = p.seq_len > 0 ? p.seq_len : std::min<int64_t>(512, max_positions);
  if (calibrated && seq_len > max_positions)
    throw ConfigError("seq_len: " + std::to_string(seq_len) + " is longer than the model's " + std::to_string(max_positions) +
                      " positions (max_position_embeddings)");

  // The modules to prune: every decoder layer's linears, less the skip list (each entry must name one).
  std::vector<std::string> all;
  for (const auto& [path, slot] : model.named_linears())
    if (path != model.family().lm_head) all.push_back(path);
  auto skipped = [&](const std::string& path) {
    return std::any_of(p.skip.begin(), p.skip.end(), [&](const std::string& e) { return skip_matches(path, e); });
  };
  for (const auto& entry : p.skip)
    if (entry != model.family().lm_head && std::none_of(all.begin(), all.end(), [&](const std::string& path) { return skip_matches(path, entry); }))
      throw ConfigError("skip: '" + entry + "' names no linear module of this model (e.g. 'mlp.down_proj', '" + all.front() + "')");
  for (const auto& path : structured ? std::vector<std::string>{} : all) {
    if (skipped(path)) {
      report.skipped.push_back(path);
      continue;
    }
    const int64_t in = model.linear(path)->in_features();
    if (target.is_nm() && in % target.m != 0)
      throw ConfigError("pattern: " + path + " has " + std::to_string(in) + " input features, not a multiple of M=" +
                        std::to_string(target.m) + "; skip it (--skip) or use another pattern");
  }

  CalibrationSet calibration;
  if (calibrated) {
    CalibrationParams cp{.path = p.calibration, .samples = p.calibration_samples, .seq_len = seq_len, .seed = p.seed};
    calibration = read_calibration(cp, *loaded.tokenizer);
    if (calibration.ids.max().item<int64_t>() >= model.config().vocab_size)
      throw DataError(p.calibration + ": token ids past the model's vocabulary (" + std::to_string(model.config().vocab_size) +
                      "): is the tokenizer the model's?");
    report.calibration_sequences = p.calibration_samples;
    report.calibration_seq_len = seq_len;
    report.calibration_corpus_tokens = calibration.corpus_tokens;
    report.calibration_starts = calibration.starts;
    spdlog::info("prune: {} calibration sequences of {} tokens from {} ({} tokens)", p.calibration_samples, seq_len,
                 p.calibration, calibration.corpus_tokens);
  }

  EvalParams e;
  if (!p.eval_data.empty()) {
    e.model = report.model_dir.string();
    e.data = p.eval_data;
    e.max_seq_len = p.eval_max_seq_len;
    e.batch_size = p.eval_batch_size;
    e.device = p.device;
    e.dtype = p.dtype;
    report.eval_before = run_eval(e);
  }

  // Prune: each linear replaced in its slot by a dense one holding the pruned weight.
  const auto t_prune = SteadyClock::now();
  for (const auto& [name, t] : model.named_weights()) report.parameters += t->numel();
  std::map<std::string, at::Tensor> pruned;  // "<module>.weight" → pruned weight (model dtype)
  if (structured) {
    report.structured = plan_structured(model, p, calibration.ids);
    report.target = describe_structured(p, model.config(), *report.structured);
  } else {
    report.nonzero_before = count_nonzero(model);
    PruneSpec spec{.method = p.method, .target = target, .scope = p.scope, .skip = skipped,
                   .sparsegpt = {.damp = p.damp, .block_size = p.block_size}};
    report.modules = prune_model(model, spec, calibration.ids);
    for (const auto& m : report.modules) {
      // GPT-2's Conv1D linears are held (out, in) and stored (in, out).
      const at::Tensor w = model.linear(m.path)->dense_weight();
      const bool in_out = model::stored_in_out(model.family(), m.path + ".weight");
      pruned[m.path + ".weight"] = in_out ? w.t().contiguous() : w;
    }
    report.nonzero_after = count_nonzero(model);
  }
  report.prune_seconds = seconds_since(t_prune);

  // The directory: the base's tensors as stored, the pruned weights in the stored dtype; for a
  // structured method, the kept layers renumbered and the kept heads/channels sliced out.
  auto checkpoint = io::WeightFiles::open(report.model_dir);
  std::vector<std::string> names = checkpoint.names();
  std::sort(names.begin(), names.end(), natural_less);
  for (const auto& [name, t] : pruned)
    if (!checkpoint.contains(name))
      throw ModelLoadError(report.model_dir.string() + ": no tensor '" + name + "' in the checkpoint to write the pruned weight over");
  std::vector<io::TensorSpec> specs;
  std::vector<std::string> sources;
  std::vector<TensorMapping> maps;
  report.parameters_after = report.parameters;
  for (const auto& name : names) {
    const auto& info = checkpoint.info(name);
    const auto dtype = io::dtype_from_safetensors(info.dtype);
    report.bytes_before += io::TensorSpec{name, dtype, info.shape}.n_bytes();
    TensorMapping m = structured ? map_tensor(model.family(), model.config(), report.structured->plan, name) : TensorMapping{name};
    std::vector<int64_t> shape = info.shape;
    if (m.dim >= 0) shape[static_cast<size_t>(m.dim)] = m.index.numel();
    int64_t before = 1, after = 1;
    for (size_t d = 0; d < shape.size(); ++d) before *= info.shape[d], after *= shape[d];
    report.parameters_after -= before - (m.name.empty() ? 0 : after);
    if (m.name.empty()) continue;
    specs.push_back({m.name, dtype, shape});
    sources.push_back(name);
    maps.push_back(std::move(m));
    report.bytes += specs.back().n_bytes();
  }
  io::AtomicDir staged(p.output);
  auto files = io::save_sharded_lazy(staged.staging(), specs, [&](size_t i) {
    const std::string& name = sources[i];
    auto it = pruned.find(name);
    if (it != pruned.end()) return it->second.to(at::kCPU).to(specs[i].dtype);
    const at::Tensor& stored = checkpoint.tensor(name);
    at::Tensor t = maps[i].dim >= 0 ? stored.index_select(maps[i].dim, maps[i].index).contiguous() : stored.clone();
    checkpoint.release(name);
    return t;
  }, p.shard_size_bytes);
  for (const auto& f : files) report.files.push_back(p.output / f.filename());
  if (structured) {
    const auto config = io::read_json_file<ModelLoadError>(report.model_dir / "config.json", "config.json");
    io::write_file_atomic(staged.staging() / "config.json",
                          rewrite_config(config, model.config(), report.structured->plan).dump(2) + "\n");
  } else {
    io::write_config_with_dtype(report.model_dir, staged.staging(), at::ScalarType::Undefined);
  }
  copy_tokenizer_and_generation_files(report.model_dir, "", staged.staging(), model.config());
  loaded.model.reset();  // the evaluation below loads the pruned model itself

  if (!p.eval_data.empty()) {
    e.model = staged.staging().string();
    report.eval_after = run_eval(e);
    spdlog::info("prune: perplexity {:.4f} → {:.4f} ({:+.2f}%)", report.eval_before->perplexity, report.eval_after->perplexity,
                 100.0 * (report.eval_after->perplexity / report.eval_before->perplexity - 1.0));
  }
  report.output = p.output;
  report.recovery_command = "llmtune finetune --model " + p.output.string() + " --data TRAIN.jsonl --output " +
                            p.output.string() + "-recovered method=lora";
  report.seconds = seconds_since(t0);
  report.peak_memory_bytes = static_cast<uint64_t>(ops::peak_memory_bytes(loaded.device.device));
  io::write_file_atomic(staged.staging() / "prune_report.json", prune_report_json(report, p));
  staged.commit();
  return report;
}

}  // namespace llmtune::pipelines
