// Structured pruning that shrinks the model into an ordinary, smaller configuration: whole decoder
// layers (ShortGPT's Block Influence, Gromov et al.'s angular distance of a block, or named), or
// attention heads and MLP channels (Minitron's activation importance), the same count in every
// layer. Scores come from one pass of the unpruned model over the calibration sequences.
// Shapes: N sequences, T tokens, H hidden, L layers, Hq query heads, I intermediate channels.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"

namespace llmtune::pipelines {

// Per-layer redundancy of the unpruned model on the calibration sequences.
struct LayerScores {
  // ShortGPT (Men et al. 2024): BI_i = 1 − mean over every token of cos(x_i, x_{i+1}), x_i the
  // input of layer i (x_L the last layer's output, before the final norm). (L,)
  std::vector<double> block_influence;
  // Gromov et al. 2024: d_l = mean over sequences of arccos(cos(x_l, x_{l+K}))/π at each
  // sequence's last token, for l = 0..L−K. Empty when no block size was asked.
  std::vector<double> angular;
  int64_t block = 0;  // K
};
LayerScores score_layers(model::CausalLM& model, const at::Tensor& ids, int64_t block, int64_t tokens_per_forward = 8192);

// Minitron (Muralidharan et al. 2024) activation importance, from the inputs of o_proj (the heads'
// concatenated attention outputs) and of down_proj (act(gate)·up): per sequence the L2 norm over
// its tokens (and a head's D dimensions), then the mean over sequences.
struct WidthScores {
  at::Tensor heads;     // (L, Hq) fp32
  at::Tensor channels;  // (L, I) fp32
};
WidthScores score_width(model::CausalLM& model, const at::Tensor& ids, int64_t tokens_per_forward = 8192);

// What the pruned model keeps, by index into the base (ascending).
struct StructuredPlan {
  std::vector<int64_t> layers;  // kept decoder layers
  // Per kept layer; empty: all kept.
  std::vector<std::vector<int64_t>> q_heads, kv_heads, channels;
  int64_t n_heads = 0, n_heads_kv = 0, intermediate_size = 0;  // the new shape
};

// "20-23,5" → {5, 20, 21, 22, 23}; ConfigError naming `key` when malformed or out of [0, n_layers).
std::vector<int64_t> parse_layer_list(const std::string& text, int64_t n_layers, const std::string& key);
// The K layers to remove: the K lowest Block Influences (ties to the lower index), or the block
// l..l+K−1 of the lowest angular distance. metric: "bi" | "angular".
std::vector<int64_t> layers_to_remove(const LayerScores& scores, const std::string& metric, int64_t k);

// The heads and channels to keep in every layer. heads/kv_heads/intermediate: the new counts (0:
// unchanged). KV groups are kept by the sum of their query heads' scores, then within each kept
// group the highest-scoring heads/kv_heads of its query heads; channels by score. Throws
// ConfigError (num_attention_heads / num_key_value_heads / intermediate_size) when the counts
// break the model's GQA grouping or exceed what it has.
StructuredPlan plan_width(const WidthScores& scores, const model::ModelConfig& c, int64_t heads, int64_t kv_heads,
                          int64_t intermediate);
// Resolves the head counts a user gave (0: not given) into a valid pair, or ConfigError.
std::pair<int64_t, int64_t> resolve_head_counts(const model::ModelConfig& c, int64_t heads, int64_t kv_heads);

// Where a checkpoint tensor goes: its new name ("" when it is dropped with its layer) and, for a
// sliced one, the dimension and the kept indices along it (int64).
struct TensorMapping {
  std::string name;
  int64_t dim = -1;
  at::Tensor index;
};
TensorMapping map_tensor(const model::FamilyDesc& f, const model::ModelConfig& base, const StructuredPlan& plan,
                         const std::string& name);

// config.json of the pruned model: num_hidden_layers and the per-layer fields (layer_types,
// max_window_layers) following the kept layers; num_attention_heads, num_key_value_heads,
// intermediate_size and an explicit head_dim for a width-pruned one.
nlohmann::ordered_json rewrite_config(nlohmann::ordered_json config, const model::ModelConfig& base,
                                      const StructuredPlan& plan);

}  // namespace llmtune::pipelines
