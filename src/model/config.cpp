// config.json → ModelConfig: the fields every family shares, then the family's own step.
#include "llmtune/model/config.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>

#include "llmtune/io/read_file.h"
#include "llmtune/model/family.h"
#include "llmtune/util/error.h"

namespace llmtune::model {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& source, const std::string& message) {
  throw ModelLoadError(source + ": " + message);
}

// Sizes beyond these are no model's: a bound that keeps size arithmetic far from overflow (the
// memory a model of the config needs is checked separately, before anything is allocated).
constexpr int64_t kMaxDimension = int64_t{1} << 31;
constexpr int64_t kMaxLayers = 65536;

// A required positive integer field, at most `max`.
int64_t get_int(const json& j, const char* key, const std::string& source, int64_t max = kMaxDimension) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) fail(source, std::string("missing '") + key + "'");
  if (!it->is_number_integer() || (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(INT64_MAX)) ||
      it->get<int64_t>() <= 0)
    fail(source, std::string("'") + key + "' must be a positive integer, got " + it->dump());
  if (it->get<int64_t>() > max)
    fail(source, std::string("'") + key + "' is " + it->dump() + ", beyond any model (at most " + std::to_string(max) + ")");
  return it->get<int64_t>();
}

// A finite number field with a lower bound (exclusive when `strict`).
double get_real(const json& j, const char* key, double fallback, double low, bool strict, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail(source, std::string("'") + key + "' has the wrong type: " + it->dump());
  const double v = it->get<double>();
  if (!std::isfinite(v) || (strict ? v <= low : v < low))
    fail(source, std::string("'") + key + "' is " + it->dump() + "; it must be a finite number " + (strict ? "> " : ">= ") +
                     json(low).dump());
  return v;
}

template <typename T>
T get_or(const json& j, const char* key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    fail(source, std::string("'") + key + "' has the wrong type: " + it->dump());
  }
}

std::vector<int64_t> id_list(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (it->is_number_integer()) return {it->get<int64_t>()};
  if (it->is_array()) {
    std::vector<int64_t> ids;
    for (const auto& v : *it) {
      if (!v.is_number_integer()) fail(source, std::string("'") + key + "' must hold integers");
      ids.push_back(v.get<int64_t>());
    }
    return ids;
  }
  fail(source, std::string("'") + key + "' must be an integer or a list of integers");
}

// rope_parameters (transformers 5) or rope_scaling + rope_theta (4.x).
RopeConfig parse_rope(const json& j, const std::string& source) {
  RopeConfig r;
  r.theta = get_real(j, "rope_theta", 10000.0, 0, true, source);
  const json* p = nullptr;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) p = &*it;
  else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && it2->is_object()) p = &*it2;
  if (!p) return r;
  r.theta = get_real(*p, "rope_theta", r.theta, 0, true, source);
  r.type = get_or<std::string>(*p, "rope_type", get_or<std::string>(*p, "type", "default", source), source);
  if (r.type == "default") return r;
  if (r.type != "linear" && r.type != "llama3")
    fail(source, "rope type '" + r.type + "' is not supported (supported: default, linear, llama3)");
  r.factor = get_real(*p, "factor", 1.0, 0, true, source);
  if (r.type == "llama3") {
    r.low_freq_factor = get_real(*p, "low_freq_factor", 1.0, 0, true, source);
    r.high_freq_factor = get_real(*p, "high_freq_factor", 4.0, 0, true, source);
    r.original_max_position_embeddings =
        p->contains("original_max_position_embeddings") && !(*p)["original_max_position_embeddings"].is_null()
            ? get_int(*p, "original_max_position_embeddings", source) : 8192;
    if (r.high_freq_factor == r.low_freq_factor) fail(source, "llama3 rope: high_freq_factor equals low_freq_factor");
  }
  return r;
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, "config.json must be a JSON object");
  ModelConfig c;
  c.model_type = get_or<std::string>(j, "model_type", "", source);
  const FamilyDesc& family = family_for(c.model_type, source);
  c.vocab_size = get_int(j, "vocab_size", source);
  c.hidden_size = get_int(j, "hidden_size", source);
  c.intermediate_size = get_int(j, "intermediate_size", source);
  c.n_layers = get_int(j, "num_hidden_layers", source, kMaxLayers);
  c.n_heads = get_int(j, "num_attention_heads", source);
  c.n_heads_kv = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                     ? get_int(j, "num_key_value_heads", source) : c.n_heads;
  c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? get_int(j, "head_dim", source)
                                                                 : c.hidden_size / c.n_heads;
  if (c.n_heads % c.n_heads_kv != 0)
    fail(source, "num_attention_heads (" + std::to_string(c.n_heads) + ") is not a multiple of num_key_value_heads (" +
                     std::to_string(c.n_heads_kv) + ")");
  if (c.head_dim == 0)
    fail(source, "hidden_size (" + std::to_string(c.hidden_size) + ") is smaller than num_attention_heads (" +
                     std::to_string(c.n_heads) + "): no head_dim");
  if (c.head_dim % 2 != 0) fail(source, "head_dim must be even for RoPE");
  c.max_position_embeddings = j.contains("max_position_embeddings") && !j["max_position_embeddings"].is_null()
                                  ? get_int(j, "max_position_embeddings", source) : 2048;
  c.rms_norm_eps = get_real(j, "rms_norm_eps", 1e-6, 0, false, source);
  c.initializer_range = get_real(j, "initializer_range", 0.02, 0, false, source);
  c.rope = parse_rope(j, source);
  c.hidden_act = get_or<std::string>(j, "hidden_act", "silu", source);
  c.tie_word_embeddings = get_or<bool>(j, "tie_word_embeddings", false, source);
  c.qkv_bias = c.o_bias = get_or<bool>(j, "attention_bias", false, source);
  c.mlp_bias = get_or<bool>(j, "mlp_bias", false, source);
  c.sliding_window_per_layer.assign(static_cast<size_t>(c.n_layers), 0);
  auto bos = id_list(j, "bos_token_id", source);
  if (!bos.empty()) c.bos_token_id = bos.front();
  auto pad = id_list(j, "pad_token_id", source);
  if (!pad.empty()) c.pad_token_id = pad.front();
  c.eos_token_ids = id_list(j, "eos_token_id", source);
  c.torch_dtype = get_or<std::string>(j, "dtype", get_or<std::string>(j, "torch_dtype", "", source), source);

  family.configure(c, j, source);
  if (c.hidden_act != "silu" && c.hidden_act != "gelu_pytorch_tanh")
    fail(source, "activation '" + c.hidden_act + "' is not supported (silu, gelu_pytorch_tanh)");
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& model_dir) {
  auto path = model_dir / "config.json";
  std::ifstream in(path);
  if (!in) throw ModelLoadError(path.string() + ": cannot read config.json (is " + model_dir.string() + " a Hugging Face model directory?)");
  return from_json(io::read_json_file<ModelLoadError, json>(path, "config.json"), path.string());
}

}  // namespace llmtune::model
