// Names, permutations and per-tensor type choice shared by GGUF export and import. The type rules
// follow llama.cpp's src/llama-quant.cpp for the file types listed in parse_file_type().
#include "gguf_arch.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/where.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <map>

#include "llmtune/util/error.h"

namespace llmtune::pipelines::gguf_detail {
namespace {

using io::GgmlType;

// Suffix of a layer tensor (after "model.layers.N.") → GGUF name after "blk.N.".
const std::vector<std::pair<std::string, std::string>>& layer_names() {
  static const std::vector<std::pair<std::string, std::string>> m = {
      {"input_layernorm", "attn_norm"},        {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},          {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},     {"post_attention_layernorm", "ffn_norm"},
      {"mlp.gate_proj", "ffn_gate"},           {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"}};
  return m;
}

const std::vector<std::pair<std::string, std::string>>& global_names() {
  static const std::vector<std::pair<std::string, std::string>> m = {
      {"model.embed_tokens", "token_embd"}, {"model.norm", "output_norm"}, {"lm_head", "output"}};
  return m;
}

// Splits "<stem>.weight" / "<stem>.bias".
bool split_suffix(const std::string& name, std::string& stem, std::string& suffix) {
  for (const char* s : {".weight", ".bias"}) {
    const std::string sx = s;
    if (name.size() > sx.size() && name.compare(name.size() - sx.size(), sx.size(), sx) == 0) {
      stem = name.substr(0, name.size() - sx.size());
      suffix = sx;
      return true;
    }
  }
  return false;
}

bool parse_layer(const std::string& stem, const std::string& prefix, int64_t& layer, std::string& rest) {
  if (stem.rfind(prefix, 0) != 0) return false;
  size_t i = prefix.size(), j = i;
  while (j < stem.size() && std::isdigit(static_cast<unsigned char>(stem[j]))) ++j;
  if (j == i || j >= stem.size() || stem[j] != '.') return false;
  layer = std::stoll(stem.substr(i, j - i));
  rest = stem.substr(j + 1);
  return true;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

bool is_quantized(GgmlType t) { return t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::BF16; }

// llama-quantize's use_more_bits(i_layer, n_layers).
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

}  // namespace

ArchInfo arch_for_model_type(const std::string& model_type, const std::string& source) {
  if (model_type == "llama" || model_type == "mistral") return {"llama", true, false};
  if (model_type == "qwen2") return {"qwen2", false, false};
  if (model_type == "gemma") return {"gemma", false, true};
  throw ModelLoadError(source + ": model_type '" + model_type +
                       "' cannot be exported to GGUF (supported: llama, mistral, qwen2, gemma)");
}

std::string hf_to_gguf_name(const std::string& hf_name) {
  std::string stem, suffix;
  if (!split_suffix(hf_name, stem, suffix)) return "";
  for (const auto& [hf, gg] : global_names())
    if (stem == hf) return gg + suffix;
  int64_t layer = 0;
  std::string rest;
  if (!parse_layer(stem, "model.layers.", layer, rest)) return "";
  for (const auto& [hf, gg] : layer_names())
    if (rest == hf) return "blk." + std::to_string(layer) + "." + gg + suffix;
  return "";
}

std::string gguf_to_hf_name(const std::string& gguf_name) {
  std::string stem, suffix;
  if (!split_suffix(gguf_name, stem, suffix)) return "";
  for (const auto& [hf, gg] : global_names())
    if (stem == gg) return hf + suffix;
  int64_t layer = 0;
  std::string rest;
  if (!parse_layer(stem, "blk.", layer, rest)) return "";
  for (const auto& [hf, gg] : layer_names())
    if (rest == gg) return "model.layers." + std::to_string(layer) + "." + hf + suffix;
  return "";
}

bool is_q_or_k(const std::string& hf_name, bool* is_k) {
  const bool q = hf_name.find("self_attn.q_proj.") != std::string::npos;
  const bool k = hf_name.find("self_attn.k_proj.") != std::string::npos;
  if (is_k) *is_k = k;
  return q || k;
}

at::Tensor permute_qk(const at::Tensor& t, int64_t n_head) {
  std::vector<int64_t> view{n_head, 2, t.size(0) / n_head / 2};
  for (int64_t d = 1; d < t.dim(); ++d) view.push_back(t.size(d));
  return t.reshape(view).transpose(1, 2).reshape(t.sizes()).contiguous();
}

at::Tensor unpermute_qk(const at::Tensor& t, int64_t n_head) {
  std::vector<int64_t> view{n_head, t.size(0) / n_head / 2, 2};
  for (int64_t d = 1; d < t.dim(); ++d) view.push_back(t.size(d));
  return t.reshape(view).transpose(1, 2).reshape(t.sizes()).contiguous();
}

at::Tensor llama3_rope_factors(const model::RopeConfig& rope, int64_t head_dim) {
  // The converter's arithmetic, in float32 like its torch scalars: 1 for short wavelengths,
  // factor for long ones, 1/((1-s)/factor + s) between.
  at::Tensor exponents = at::arange(0, head_dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(head_dim);
  at::Tensor freqs = at::pow(rope.theta, exponents).reciprocal();
  const double old_len = static_cast<double>(rope.original_max_position_embeddings);
  const double low_wavelen = old_len / rope.low_freq_factor;
  const double high_wavelen = old_len / rope.high_freq_factor;
  at::Tensor wavelen = freqs.reciprocal() * (2 * M_PI);
  at::Tensor smooth = (wavelen.reciprocal() * old_len - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor);
  at::Tensor mid = ((1 - smooth) / rope.factor + smooth).reciprocal();
  at::Tensor out = at::where(wavelen > low_wavelen, at::full_like(mid, rope.factor), mid);
  return at::where(wavelen < high_wavelen, at::full_like(mid, 1.0), out).contiguous();
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_hf_tensors(const model::ModelConfig& c,
                                                                              bool with_lm_head) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  const int64_t h = c.hidden_size, q = c.n_heads * c.head_dim, kv = c.n_heads_kv * c.head_dim, f = c.intermediate_size;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  auto linear = [&](const std::string& p, int64_t o, int64_t i, bool bias) {
    out.push_back({p + ".weight", {o, i}});
    if (bias) out.push_back({p + ".bias", {o}});
  };
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    linear(p + "self_attn.q_proj", q, h, c.qkv_bias);
    linear(p + "self_attn.k_proj", kv, h, c.qkv_bias);
    linear(p + "self_attn.v_proj", kv, h, c.qkv_bias);
    linear(p + "self_attn.o_proj", h, q, c.o_bias);
    linear(p + "mlp.gate_proj", f, h, c.mlp_bias);
    linear(p + "mlp.up_proj", f, h, c.mlp_bias);
    linear(p + "mlp.down_proj", h, f, c.mlp_bias);
  }
  out.push_back({"model.norm.weight", {h}});
  if (with_lm_head) out.push_back({"lm_head.weight", {c.vocab_size, h}});
  return out;
}

FileType parse_file_type(const std::string& name) {
  static const std::map<std::string, FileType> types = {
      {"f32", {"F32", 0, GgmlType::F32}},        {"f16", {"F16", 1, GgmlType::F16}},
      {"bf16", {"BF16", 32, GgmlType::BF16}},    {"q8_0", {"Q8_0", 7, GgmlType::Q8_0}},
      {"q4_0", {"Q4_0", 2, GgmlType::Q4_0}},     {"q4_1", {"Q4_1", 3, GgmlType::Q4_1}},
      {"q5_0", {"Q5_0", 8, GgmlType::Q5_0}},     {"q5_1", {"Q5_1", 9, GgmlType::Q5_1}},
      {"q4_k_s", {"Q4_K_S", 14, GgmlType::Q4_K}}, {"q4_k_m", {"Q4_K_M", 15, GgmlType::Q4_K}},
      {"q4_k", {"Q4_K_M", 15, GgmlType::Q4_K}},   {"q5_k_s", {"Q5_K_S", 16, GgmlType::Q5_K}},
      {"q5_k_m", {"Q5_K_M", 17, GgmlType::Q5_K}}, {"q5_k", {"Q5_K_M", 17, GgmlType::Q5_K}},
      {"q6_k", {"Q6_K", 18, GgmlType::Q6_K}}};
  auto it = types.find(lower(name));
  if (it == types.end())
    throw QuantError("GGUF type '" + name +
                     "' is not supported (supported: auto, f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_s, "
                     "q4_k_m, q5_k_s, q5_k_m, q6_k)");
  return it->second;
}

FileType file_type_for_source(at::ScalarType first_matrix_dtype) {
  return parse_file_type(first_matrix_dtype == at::kBFloat16 ? "bf16" : "f16");
}

GgmlType choose_tensor_type(const FileType& ft, const std::string& name, const std::vector<int64_t>& ne,
                            int64_t layer, int64_t n_layers, bool tied, int64_t* n_fallback) {
  // The converter: 1-D tensors, norms and anything not a weight stay F32.
  const bool weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
  if (ne.size() < 2 || !weight || name.find("_norm.weight") != std::string::npos) return GgmlType::F32;
  const GgmlType base = ft.base;
  const int64_t ncols = ne[0];
  if (!is_quantized(base)) return base;
  if (base == GgmlType::Q8_0 && ncols % 32 != 0) {  // the converter's fallback for its own Q8_0
    if (n_fallback) ++*n_fallback;
    return GgmlType::F16;
  }
  const bool output = name == "output.weight";
  const bool embd = name == "token_embd.weight";
  GgmlType t = base;
  if (output || (tied && embd)) {
    if (ncols % io::ggml_type_info(base).block_size != 0) t = GgmlType::Q8_0;
    else if (base != GgmlType::Q8_0) t = GgmlType::Q6_K;
  } else if (name.find("attn_v.weight") != std::string::npos) {
    // one attn_v per layer, visited in layer order: llama.cpp's i_attention_wv is the layer
    if ((ft.name == "Q4_K_M" || ft.name == "Q5_K_M") && use_more_bits(layer, n_layers)) t = GgmlType::Q6_K;
    else if (ft.name == "Q4_K_S" && layer < 4) t = GgmlType::Q5_K;
  } else if (name.find("ffn_down") != std::string::npos) {
    if ((ft.name == "Q4_K_M" || ft.name == "Q5_K_M") && use_more_bits(layer, n_layers)) t = GgmlType::Q6_K;
    else if (ft.name == "Q4_K_S" && layer < n_layers / 8) t = GgmlType::Q5_K;
  }
  // tensor_type_fallback: shapes the chosen type cannot hold.
  if (ncols % io::ggml_type_info(t).block_size != 0) {
    if (n_fallback) ++*n_fallback;
    GgmlType f;
    switch (t) {
      case GgmlType::Q4_K: f = GgmlType::Q5_0; break;
      case GgmlType::Q5_K: f = GgmlType::Q5_1; break;
      case GgmlType::Q6_K: f = GgmlType::Q8_0; break;
      default:
        throw QuantError("tensor " + name + ": ne[0] = " + std::to_string(ncols) + " is not a multiple of " +
                         std::to_string(io::ggml_type_info(t).block_size) + " as " + io::ggml_type_info(t).name +
                         " needs, and llama.cpp defines no fallback for it");
    }
    t = ncols % io::ggml_type_info(f).block_size == 0 ? f : GgmlType::F16;
  }
  return t;
}

int64_t block_of(const std::string& gguf_name) {
  int layer = -1;
  if (std::sscanf(gguf_name.c_str(), "blk.%d.", &layer) != 1) return -1;
  return layer;
}

bool gguf_name_less(const std::string& a, const std::string& b) {
  const int64_t la = block_of(a), lb = block_of(b);
  if (la != lb) return la < lb;
  return a < b;
}

}  // namespace llmtune::pipelines::gguf_detail
