// prune_report.json: what was pruned, how, on what calibration, and what it cost.
#include <algorithm>
#include <nlohmann/json.hpp>

#include "llmtune/pipelines/prune.h"

namespace llmtune::pipelines {

std::vector<TypeSparsity> sparsity_by_type(const PruneReport& report) {
  std::vector<TypeSparsity> types;
  for (const auto& m : report.modules) {
    // "model.layers.3.mlp.down_proj" → "mlp.down_proj": what follows the layer number.
    std::string type = m.path;
    const size_t layers = type.find(".layers.");
    if (layers != std::string::npos) {
      const size_t dot = type.find('.', layers + 8);
      if (dot != std::string::npos) type = type.substr(dot + 1);
    }
    auto it = std::find_if(types.begin(), types.end(), [&](const TypeSparsity& t) { return t.type == type; });
    if (it == types.end()) it = types.insert(types.end(), {type, 0, 0});
    it->zeros += m.zeros_after;
    it->weights += m.out_features * m.in_features;
  }
  return types;
}

namespace {

using json = nlohmann::ordered_json;

json tensor_rows(const at::Tensor& t) {
  json rows = json::array();
  const at::Tensor d = t.to(at::kDouble).contiguous();
  for (int64_t i = 0; i < d.size(0); ++i) {
    const double* p = d[i].data_ptr<double>();
    rows.push_back(std::vector<double>(p, p + d.size(1)));
  }
  return rows;
}

// What structured pruning kept and removed, and the scores it chose by (channel scores are left
// out: one per MLP channel per layer is too many to read).
json structured_json(const StructuredResult& s) {
  const StructuredPlan& p = s.plan;
  json j{{"layers", {s.n_layers_before, p.layers.size()}}, {"num_attention_heads", {s.n_heads_before, p.n_heads}},
         {"num_key_value_heads", {s.n_heads_kv_before, p.n_heads_kv}}, {"intermediate_size", {s.intermediate_before, p.intermediate_size}},
         {"kept_layers", p.layers}};
  if (!s.layer_metric.empty()) {
    j["layer_metric"] = s.layer_metric;
    j["removed_layers"] = s.removed_layers;
  }
  if (s.layer_scores) {
    j["block_influence"] = s.layer_scores->block_influence;
    if (!s.layer_scores->angular.empty()) {
      j["angular_block"] = s.layer_scores->block;
      j["angular_distance"] = s.layer_scores->angular;
    }
  }
  if (s.width_scores) {
    j["head_scores"] = tensor_rows(s.width_scores->heads);
    j["kept_query_heads"] = p.q_heads;
    j["kept_kv_heads"] = p.kv_heads;
    json removed = json::array();
    for (const auto& c : p.channels) removed.push_back(c.empty() ? 0 : s.intermediate_before - static_cast<int64_t>(c.size()));
    j["removed_channels_per_layer"] = removed;
  }
  return j;
}

}  // namespace

std::string prune_report_json(const PruneReport& r, const PruneParams& p) {
  json j{{"model", r.model_dir.string()}, {"output", r.output.string()}, {"method", r.method}, {"target", r.target},
         {"scope", r.scope}};
  json settings{{"sparsity", p.pattern.empty() ? json(p.sparsity) : json(nullptr)},
                {"pattern", p.pattern.empty() ? json(nullptr) : json(p.pattern)}, {"skip", p.skip},
                {"device", r.device}, {"dtype", r.dtype}, {"seed", p.seed}};
  if (r.structured) {
    settings = {{"device", r.device}, {"dtype", r.dtype}, {"seed", p.seed}};
    if (r.method == "layers") {
      settings["remove_layers"] = p.drop_layers.empty() ? json(p.remove_layers) : json(nullptr);
      settings["layer_metric"] = p.layer_metric;
      settings["drop_layers"] = p.drop_layers.empty() ? json(nullptr) : json(p.drop_layers);
    } else {
      settings["num_attention_heads"] = p.num_attention_heads;
      settings["num_key_value_heads"] = p.num_key_value_heads;
      settings["intermediate_size"] = p.intermediate_size;
    }
  }
  if (r.method == "sparsegpt") {
    settings["damp"] = p.damp;
    settings["block_size"] = p.block_size;
  }
  j["settings"] = settings;
  if (r.calibration_sequences > 0)
    j["calibration"] = {{"path", p.calibration}, {"sequences", r.calibration_sequences}, {"seq_len", r.calibration_seq_len},
                        {"corpus_tokens", r.calibration_corpus_tokens}, {"seed", p.seed},
                        {"sampling", "random windows of the tokenized text (mt19937_64 draw mod (tokens - seq_len + 1))"},
                        {"starts", r.calibration_starts}};
  j["parameters"] = r.parameters;
  if (r.structured) {
    j["parameters_after"] = r.parameters_after;
    j["structured"] = structured_json(*r.structured);
  } else {
    j["nonzero_before"] = r.nonzero_before;
    j["nonzero_after"] = r.nonzero_after;
  }
  j["bytes_before"] = r.bytes_before;
  j["bytes"] = r.bytes;
  json types = json::object();
  for (const auto& t : sparsity_by_type(r))
    types[t.type] = t.weights ? static_cast<double>(t.zeros) / static_cast<double>(t.weights) : 0.0;
  j["sparsity_by_type"] = types;
  json modules = json::array();
  for (const auto& m : r.modules)
    modules.push_back({{"module", m.path}, {"shape", {m.out_features, m.in_features}}, {"zeros_before", m.zeros_before},
                       {"zeros_after", m.zeros_after}, {"sparsity", m.sparsity()}});
  j["modules"] = modules;
  j["skipped"] = r.skipped;
  if (r.eval_before) {
    j["eval"] = {{"data", p.eval_data}, {"tokens", r.eval_after ? r.eval_after->tokens : r.eval_before->tokens},
                 {"perplexity_before", r.eval_before->perplexity}, {"loss_before", r.eval_before->loss}};
    if (r.eval_after) {
      j["eval"]["perplexity_after"] = r.eval_after->perplexity;
      j["eval"]["loss_after"] = r.eval_after->loss;
    }
  }
  j["prune_seconds"] = r.prune_seconds;
  j["seconds"] = r.seconds;
  j["peak_memory_bytes"] = r.peak_memory_bytes;
  j["recovery_command"] = r.recovery_command;
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace llmtune::pipelines
