// The family registry and everything derived from a description: shapes, checkpoint tensor lists
// and the transformers ↔ GGUF name maps.
#include "llmtune/model/family.h"

#include <cctype>

#include "families.h"
#include "llmtune/util/error.h"
#include "llmtune/util/registry.h"

namespace llmtune::model {
namespace {

Registry<FamilyDesc>& registry() {
  static auto* r = new Registry<FamilyDesc>({llama_family(), mistral_family(), qwen2_family(), qwen3_family(),
                                              gemma_family(), gemma2_family(), gemma3_family(), phi3_family(),
                                              gpt2_family()});
  return *r;
}

const auto kAll = [](const FamilyDesc&) { return true; };

// Splits "<stem>.weight" / "<stem>.bias".
bool split_suffix(const std::string& name, std::string& stem, std::string& suffix) {
  for (const char* s : {".weight", ".bias"}) {
    const std::string sx = s;
    if (name.size() > sx.size() && name.ends_with(sx)) {
      stem = name.substr(0, name.size() - sx.size());
      suffix = sx;
      return true;
    }
  }
  return false;
}

// "<prefix>N.<rest>" → N, rest.
bool parse_layer(const std::string& stem, const std::string& prefix, int64_t& layer, std::string& rest) {
  if (!stem.starts_with(prefix)) return false;
  size_t i = prefix.size(), j = i;
  while (j < stem.size() && std::isdigit(static_cast<unsigned char>(stem[j]))) ++j;
  if (j == i || j >= stem.size() || stem[j] != '.' || j - i > 9) return false;
  layer = std::stoll(stem.substr(i, j - i));
  rest = stem.substr(j + 1);
  return true;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

FamilyDesc llama_layout(std::string model_type) {
  FamilyDesc f;
  f.model_type = std::move(model_type);
  f.norms = {{NormRole::Input, "input_layernorm", "attn_norm"},
             {NormRole::PostAttention, "post_attention_layernorm", "ffn_norm"}};
  f.linears = {{"self_attn.q_proj", "attn_q", {Proj::Q}},     {"self_attn.k_proj", "attn_k", {Proj::K}},
               {"self_attn.v_proj", "attn_v", {Proj::V}},     {"self_attn.o_proj", "attn_output", {Proj::O}},
               {"mlp.gate_proj", "ffn_gate", {Proj::Gate}},   {"mlp.up_proj", "ffn_up", {Proj::Up}},
               {"mlp.down_proj", "ffn_down", {Proj::Down}}};
  f.gguf.arch = "llama";
  f.gguf.permute_qk = true;
  f.configure = [](ModelConfig&, const nlohmann::json&, const std::string&) {};
  return f;
}

void register_family(FamilyDesc family) {
  // A re-registration replaces (tests register their own once per process).
  registry().put(std::move(family), [](const FamilyDesc& f) { return f.model_type; });
}

const FamilyDesc* find_family(const std::string& model_type) {
  return registry().find([&](const FamilyDesc& f) { return f.model_type == model_type; });
}

const FamilyDesc& family_for(const std::string& model_type, const std::string& source) {
  if (const FamilyDesc* f = find_family(model_type)) return *f;
  throw ModelLoadError(source + ": model_type '" + model_type + "' is not supported (supported: " +
                       join(supported_model_types()) + ")");
}

const FamilyDesc* family_for_gguf_arch(const std::string& arch) {
  return registry().find([&](const FamilyDesc& f) { return !f.gguf.arch.empty() && f.gguf.arch == arch && f.gguf.loads_arch; });
}

std::vector<std::string> supported_model_types() {
  return registry().names(kAll, [](const FamilyDesc& f) { return f.model_type; });
}

std::vector<std::string> supported_gguf_archs() {
  return registry().names([](const FamilyDesc& f) { return !f.gguf.arch.empty() && f.gguf.loads_arch; },
                          [](const FamilyDesc& f) { return f.gguf.arch; });
}

int64_t norm_size(const ModelConfig& c, NormRole role) {
  return role == NormRole::QHead || role == NormRole::KHead ? c.head_dim : c.hidden_size;
}

int64_t proj_out_features(const ModelConfig& c, Proj p) {
  switch (p) {
    case Proj::Q: return c.n_heads * c.head_dim;
    case Proj::K:
    case Proj::V: return c.n_heads_kv * c.head_dim;
    case Proj::O:
    case Proj::Down: return c.hidden_size;
    case Proj::Gate:
    case Proj::Up: return c.intermediate_size;
  }
  return 0;
}

int64_t proj_in_features(const ModelConfig& c, Proj p) {
  switch (p) {
    case Proj::O: return c.n_heads * c.head_dim;
    case Proj::Down: return c.intermediate_size;
    default: return c.hidden_size;
  }
}

bool proj_has_bias(const ModelConfig& c, Proj p) {
  switch (p) {
    case Proj::Q:
    case Proj::K:
    case Proj::V: return c.qkv_bias;
    case Proj::O: return c.o_bias;
    default: return c.mlp_bias;
  }
}

LinearShape linear_shape(const FamilyDesc& f, const ModelConfig& c, int64_t layer, const LinearDesc& l) {
  LinearShape s;
  s.path = f.layers_prefix + std::to_string(layer) + "." + l.name;
  for (Proj p : l.parts) s.out_features += proj_out_features(c, p);
  s.in_features = proj_in_features(c, l.parts.front());
  s.bias = proj_has_bias(c, l.parts.front());
  return s;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(const FamilyDesc& f, const ModelConfig& c,
                                                                             bool with_lm_head) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  const int64_t h = c.hidden_size;
  out.push_back({f.embed + ".weight", {c.vocab_size, h}});
  if (!f.pos_embed.empty()) out.push_back({f.pos_embed + ".weight", {c.max_position_embeddings, h}});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = f.layers_prefix + std::to_string(l) + ".";
    for (const auto& n : f.norms) {
      out.push_back({p + n.name + ".weight", {norm_size(c, n.role)}});
      if (f.layer_norm) out.push_back({p + n.name + ".bias", {norm_size(c, n.role)}});
    }
    for (const auto& d : f.linears) {
      LinearShape s = linear_shape(f, c, l, d);
      out.push_back({s.path + ".weight", {s.out_features, s.in_features}});
      if (s.bias) out.push_back({s.path + ".bias", {s.out_features}});
    }
  }
  out.push_back({f.final_norm + ".weight", {h}});
  if (f.layer_norm) out.push_back({f.final_norm + ".bias", {h}});
  if (with_lm_head) out.push_back({f.lm_head + ".weight", {c.vocab_size, h}});
  return out;
}

double parameter_count(const FamilyDesc& f, const ModelConfig& c, bool with_lm_head) {
  const auto h = static_cast<double>(c.hidden_size), vocab = static_cast<double>(c.vocab_size);
  double layer = 0;
  for (const auto& n : f.norms) layer += static_cast<double>(norm_size(c, n.role)) * (f.layer_norm ? 2 : 1);
  for (const auto& d : f.linears) {
    const LinearShape s = linear_shape(f, c, 0, d);
    const auto out = static_cast<double>(s.out_features);
    layer += out * static_cast<double>(s.in_features) + (s.bias ? out : 0.0);
  }
  const double positions = f.pos_embed.empty() ? 0.0 : static_cast<double>(c.max_position_embeddings) * h;
  return vocab * h * (with_lm_head ? 2 : 1) + positions + layer * static_cast<double>(c.n_layers) + h * (f.layer_norm ? 2 : 1);
}

std::string hf_to_gguf_name(const FamilyDesc& f, const std::string& hf_name) {
  std::string stem, suffix;
  if (!split_suffix(hf_name, stem, suffix)) return "";
  if (stem == f.embed) return f.embed_gguf + suffix;
  if (!f.pos_embed.empty() && stem == f.pos_embed) return f.pos_embed_gguf + suffix;
  if (stem == f.final_norm) return f.final_norm_gguf + suffix;
  if (stem == f.lm_head) return f.lm_head_gguf + suffix;
  int64_t layer = 0;
  std::string rest;
  if (!parse_layer(stem, f.layers_prefix, layer, rest)) return "";
  const std::string blk = "blk." + std::to_string(layer) + ".";
  for (const auto& n : f.norms)
    if (rest == n.name) return blk + n.gguf + suffix;
  for (const auto& l : f.linears)
    if (rest == l.name) return blk + l.gguf + suffix;
  return "";
}

bool is_norm_weight(const FamilyDesc& f, const std::string& hf_name) {
  if (hf_name == f.final_norm + ".weight") return true;
  int64_t layer = 0;
  std::string rest;
  if (!hf_name.ends_with(".weight") || !parse_layer(hf_name, f.layers_prefix, layer, rest)) return false;
  for (const auto& n : f.norms)
    if (rest == n.name + ".weight") return true;
  return false;
}

bool stored_in_out(const FamilyDesc& f, const std::string& hf_name) {
  if (!f.conv1d || !hf_name.ends_with(".weight")) return false;
  const bool prefixed = f.optional_prefix.empty() || hf_name.starts_with(f.optional_prefix);
  return !projections_of(f, prefixed ? hf_name : f.optional_prefix + hf_name).empty();
}

std::vector<Proj> projections_of(const FamilyDesc& f, const std::string& hf_name) {
  std::string stem = hf_name, suffix;
  split_suffix(hf_name, stem, suffix);
  int64_t layer = 0;
  std::string rest;
  if (!parse_layer(stem, f.layers_prefix, layer, rest)) return {};
  for (const auto& l : f.linears)
    if (rest == l.name) return l.parts;
  return {};
}

}  // namespace llmtune::model
