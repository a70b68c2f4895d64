// `llmtune prune`: unstructured and N:M sparsity (magnitude, Wanda, SparseGPT) applied to the
// decoder layers' linears, calibrated layer by layer on text (dense layout, zeros stored); or
// structured pruning (whole layers, or heads and MLP channels) into a smaller ordinary model. The
// result is written as a standard Hugging Face directory with prune_report.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/eval.h"
#include "llmtune/pipelines/prune_methods.h"
#include "llmtune/pipelines/prune_structured.h"

namespace llmtune::pipelines {

// The methods `prune` knows, for the schema's choices and messages.
const std::vector<std::string>& prune_methods();

struct PruneParams {
  std::string model;  // directory or hub-cache repo id
  std::filesystem::path output;
  std::string method;       // magnitude | wanda | sparsegpt | layers | width
  double sparsity = 0.5;    // [0, 1), unless pattern is given
  std::string pattern;      // "" or N:M ("2:4")
  std::string scope = "row";  // magnitude: compare within each output row, or within the whole layer
  // Modules left dense: a module path, or its tail after a '.' ("mlp.down_proj", "model.layers.0.self_attn.q_proj").
  // The embeddings and lm_head are never pruned.
  std::vector<std::string> skip;
  std::string calibration;  // text for wanda and sparsegpt (.txt, .jsonl/.json)
  int64_t calibration_samples = 128;
  int64_t seq_len = 0;      // 0: min(512, max_position_embeddings)
  uint64_t seed = 42;
  double damp = 0.01;       // sparsegpt
  int64_t block_size = 128; // sparsegpt
  // layers: remove `remove_layers` chosen by `layer_metric` (bi | angular) on the calibration text,
  // or the layers `drop_layers` names ("20-23,5").
  int64_t remove_layers = 0;
  std::string layer_metric = "bi", drop_layers;
  // width: the new counts in every layer (0: unchanged).
  int64_t num_attention_heads = 0, num_key_value_heads = 0, intermediate_size = 0;
  std::string eval_data;    // perplexity before and after, as eval computes it
  int64_t eval_max_seq_len = 512, eval_batch_size = 8;
  std::string device = "auto", dtype = "auto";
  uint64_t shard_size_bytes = 5'000'000'000;
  bool force = false;
};

struct PrunedModule {
  std::string path;
  int64_t out_features = 0, in_features = 0;
  int64_t zeros_before = 0, zeros_after = 0;
  double sparsity() const { return static_cast<double>(zeros_after) / static_cast<double>(out_features * in_features); }
};

// What structured pruning removed and the scores it chose by.
struct StructuredResult {
  StructuredPlan plan;
  std::vector<int64_t> removed_layers;
  std::string layer_metric;  // "bi", "angular" or "named"
  std::optional<LayerScores> layer_scores;
  std::optional<WidthScores> width_scores;
  int64_t n_layers_before = 0, n_heads_before = 0, n_heads_kv_before = 0, intermediate_before = 0;
};

struct PruneReport {
  std::filesystem::path model_dir, output;
  std::string method, target, scope, device, dtype;
  std::vector<PrunedModule> modules;
  std::vector<std::string> skipped;  // module paths left dense
  int64_t calibration_sequences = 0, calibration_seq_len = 0, calibration_corpus_tokens = 0;
  std::vector<int64_t> calibration_starts;
  int64_t parameters = 0, nonzero_before = 0, nonzero_after = 0;
  uint64_t bytes = 0;  // the weights written
  uint64_t bytes_before = 0;  // the base's weights
  int64_t parameters_after = 0;
  std::optional<StructuredResult> structured;
  std::optional<EvalResult> eval_before, eval_after;
  std::vector<std::filesystem::path> files;
  std::string recovery_command;  // the fine-tune that recovers quality, to print
  double prune_seconds = 0, seconds = 0;
  uint64_t peak_memory_bytes = 0;
};

// What to prune and how: the pure part of PruneParams.
struct PruneSpec {
  std::string method;  // magnitude | wanda | sparsegpt
  SparsityTarget target;
  std::string scope = "row";  // magnitude: row | layer
  std::function<bool(const std::string& path)> skip;  // linears left dense (nullptr: none)
  SparseGptOptions sparsegpt;
  int64_t tokens_per_forward = 8192;  // calibration sequences run together, at least one
};

// Prunes the decoder layers' linears of `model` in place (each replaced in its slot by a dense
// linear holding the pruned weight, in the model's dtype). calibration_ids (N, T) int64: the
// sequences wanda and sparsegpt calibrate on, layer by layer (model::run_layerwise); unused (may be
// undefined) for magnitude. Returns the modules pruned, in model order.
std::vector<PrunedModule> prune_model(model::CausalLM& model, const PruneSpec& spec, const at::Tensor& calibration_ids);

// Every input is checked (method, target, output, base, calibration text) before the model is
// pruned; the output directory appears whole, prune_report.json included, or not at all.
PruneReport run_prune(const PruneParams& params);

// Sparsity achieved per module type ("self_attn.q_proj", "mlp.down_proj"), over every layer, in
// the order the types first appear: (type, zeros, weights).
struct TypeSparsity {
  std::string type;
  int64_t zeros = 0, weights = 0;
};
std::vector<TypeSparsity> sparsity_by_type(const PruneReport& report);

// prune_report.json's content.
std::string prune_report_json(const PruneReport& report, const PruneParams& params);

}  // namespace llmtune::pipelines
