// config.json → ModelConfig: the fields every family shares, then the family's own step.
#include "llmtune/model/config.h"

#include <algorithm>
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

bool has(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

// A list of finite positive numbers (longrope's short_factor / long_factor).
std::vector<double> positive_list(const json& j, const char* key, const std::string& source) {
  if (!has(j, key)) fail(source, std::string("missing '") + key + "' (rope type 'longrope' needs it)");
  const json& v = j[key];
  if (!v.is_array()) fail(source, std::string("'") + key + "' must be a list of numbers, got " + v.dump());
  std::vector<double> out;
  for (const auto& x : v) {
    if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() <= 0)
      fail(source, std::string("'") + key + "' must hold finite numbers > 0, got " + x.dump());
    out.push_back(x.get<double>());
  }
  return out;
}

// head_dim as from_json derives it, or 0 when this json has no head sizes (Gemma 3 passes a bare
// rope dict): then the checks that need it are left to rope_tables.
int64_t head_dim_in(const json& j) {
  auto integer = [&](const char* key) { return has(j, key) && j[key].is_number_integer() ? j[key].get<int64_t>() : 0; };
  if (integer("head_dim") > 0) return integer("head_dim");
  return integer("num_attention_heads") > 0 ? integer("hidden_size") / integer("num_attention_heads") : 0;
}

// rope_parameters (transformers 5) or rope_scaling + rope_theta (4.x), resolved as transformers 5
// does: the dict's rope_theta and partial_rotary_factor before the top-level keys, a top-level
// original_max_position_embeddings before the dict's (Phi-3), max_position_embeddings last.
RopeConfig parse_rope(const json& j, const std::string& source) {
  RopeConfig r;
  r.theta = get_real(j, "rope_theta", 10000.0, 0, true, source);
  r.partial_rotary_factor = get_real(j, "partial_rotary_factor", 1.0, 0, true, source);
  const json* p = nullptr;
  std::string dict = "rope_parameters";
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) p = &*it;
  else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && it2->is_object()) {
    p = &*it2;
    dict = "rope_scaling";
  }
  const std::string src = source + ": " + dict;
  if (p) {
    r.theta = get_real(*p, "rope_theta", r.theta, 0, true, src);
    r.partial_rotary_factor = get_real(*p, "partial_rotary_factor", r.partial_rotary_factor, 0, true, src);
    r.type = get_or<std::string>(*p, "rope_type", get_or<std::string>(*p, "type", "default", src), src);
  }
  if (r.partial_rotary_factor > 1) fail(source, "'partial_rotary_factor' is " + json(r.partial_rotary_factor).dump() + "; it must be in (0, 1]");
  const int64_t head_dim = head_dim_in(j);
  const int64_t dim = static_cast<int64_t>(static_cast<double>(head_dim) * r.partial_rotary_factor);  // as rotary_dim
  if (head_dim > 0 && dim < 2)
    fail(source, "'partial_rotary_factor' " + json(r.partial_rotary_factor).dump() + " leaves fewer than 2 of head_dim " +
                  std::to_string(head_dim) + " rotating");
  if (!p || r.type == "default") return r;

  if (r.type == "su") r.type = "longrope";  // Phi-3's old name
  // transformers' Phi3Config reads its old "yarn" spelling as longrope too.
  if (r.type == "yarn" && get_or<std::string>(j, "model_type", "", source) == "phi3") r.type = "longrope";
  if (r.type != "linear" && r.type != "llama3" && r.type != "dynamic" && r.type != "yarn" && r.type != "longrope")
    fail(src, "rope type '" + r.type + "' is not supported (supported: default, linear, llama3, dynamic, yarn, longrope, su)");
  const int64_t max_positions = has(j, "max_position_embeddings") ? get_int(j, "max_position_embeddings", source) : 2048;
  if (r.type == "llama3" || r.type == "yarn" || r.type == "longrope") {
    // Phi3Config always has the top-level key (4096 when absent) and ignores the dict's.
    const bool phi3 = get_or<std::string>(j, "model_type", "", source) == "phi3";
    r.original_max_position_embeddings =
        has(j, "original_max_position_embeddings") ? get_int(j, "original_max_position_embeddings", source)
        : phi3                                      ? 4096
        : has(*p, "original_max_position_embeddings") ? get_int(*p, "original_max_position_embeddings", src)
                                                      : max_positions;
  }
  if (r.type == "longrope") {
    // Absent, the factor is the context's stretch, which sets the default attention factor.
    r.factor = has(*p, "factor") ? get_real(*p, "factor", 1.0, 0, true, src)
                                 : static_cast<double>(max_positions) / static_cast<double>(r.original_max_position_embeddings);
  } else {
    if (!has(*p, "factor")) fail(src, "missing 'factor' (rope type '" + r.type + "' needs it)");
    r.factor = get_real(*p, "factor", 1.0, 0, true, src);
  }
  if (r.type == "llama3") {
    r.low_freq_factor = get_real(*p, "low_freq_factor", 1.0, 0, true, src);
    r.high_freq_factor = get_real(*p, "high_freq_factor", 4.0, 0, true, src);
    if (r.high_freq_factor == r.low_freq_factor) fail(src, "llama3 rope: high_freq_factor equals low_freq_factor");
  }
  if (r.type == "yarn" || r.type == "longrope") {
    if (has(*p, "attention_factor")) r.attention_factor = get_real(*p, "attention_factor", 1.0, 0, true, src);
  }
  if (r.type == "yarn") {
    // transformers reads these with `or`: 0 means the default, as absent does.
    r.beta_fast = get_real(*p, "beta_fast", 32.0, 0, false, src);
    r.beta_slow = get_real(*p, "beta_slow", 1.0, 0, false, src);
    if (r.beta_fast == 0) r.beta_fast = 32.0;
    if (r.beta_slow == 0) r.beta_slow = 1.0;
    r.mscale = get_real(*p, "mscale", 0.0, 0, false, src);
    r.mscale_all_dim = get_real(*p, "mscale_all_dim", 0.0, 0, false, src);
    r.truncate = get_or<bool>(*p, "truncate", true, src);
  }
  if (r.type == "longrope") {
    r.short_factor = positive_list(*p, "short_factor", src);
    r.long_factor = positive_list(*p, "long_factor", src);
    const size_t want = static_cast<size_t>((dim + 1) / 2);
    auto check = [&](const char* key, const std::vector<double>& v) {
      if (head_dim > 0 && v.size() != want)
        fail(src, std::string("'") + key + "' has " + std::to_string(v.size()) + " values; rotary_dim " +
                      std::to_string(2 * want) + " needs " + std::to_string(want));
    };
    check("short_factor", r.short_factor);
    check("long_factor", r.long_factor);
  }
  if (r.type == "dynamic" && head_dim > 0 && dim <= 2)
    fail(src, "rope type 'dynamic' needs more than 2 rotary dims, got " + std::to_string(dim));
  return r;
}

}  // namespace

RopeConfig parse_rope_json(const json& j, const std::string& source) { return parse_rope(j, source); }

ModelConfig ModelConfig::from_json(const json& original, const std::string& source) {
  if (!original.is_object()) fail(source, "config.json must be a JSON object");
  ModelConfig c;
  c.model_type = get_or<std::string>(original, "model_type", "", source);
  const FamilyDesc& family = family_for(c.model_type, source);
  json prepared;
  if (family.prepare) {
    prepared = original;
    family.prepare(prepared, source);
  }
  const json& j = family.prepare ? prepared : original;
  c.vocab_size = get_int(j, "vocab_size", source);
  c.hidden_size = get_int(j, "hidden_size", source);
  c.intermediate_size = get_int(j, "intermediate_size", source);
  c.n_layers = get_int(j, "num_hidden_layers", source, kMaxLayers);
  c.n_heads = get_int(j, "num_attention_heads", source);
  c.n_heads_kv = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                     ? get_int(j, "num_key_value_heads", source) : c.n_heads;
  const bool explicit_head_dim = j.contains("head_dim") && !j["head_dim"].is_null();
  c.head_dim = explicit_head_dim ? get_int(j, "head_dim", source) : c.hidden_size / c.n_heads;
  if (!explicit_head_dim && c.head_dim > 0 && c.hidden_size % c.n_heads != 0)
    fail(source, "hidden_size (" + std::to_string(c.hidden_size) + ") is not a multiple of num_attention_heads (" +
                     std::to_string(c.n_heads) + ") and there is no head_dim");
  if (c.n_heads % c.n_heads_kv != 0)
    fail(source, "num_attention_heads (" + std::to_string(c.n_heads) + ") is not a multiple of num_key_value_heads (" +
                     std::to_string(c.n_heads_kv) + ")");
  if (c.head_dim == 0)
    fail(source, "hidden_size (" + std::to_string(c.hidden_size) + ") is smaller than num_attention_heads (" +
                     std::to_string(c.n_heads) + "): no head_dim");
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

  for (const char* key : {"attention_dropout", "hidden_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop"})
    if (auto it = j.find(key); it != j.end() && it->is_number()) c.dropout = std::max(c.dropout, it->get<double>());
  family.configure(c, j, source);
  if (!c.learned_positions && c.head_dim % 2 != 0) fail(source, "head_dim must be even for RoPE");
  if (c.hidden_act == "gelu_new") c.hidden_act = "gelu_pytorch_tanh";  // the same tanh approximation
  if (c.hidden_act != "silu" && c.hidden_act != "gelu_pytorch_tanh")
    fail(source, "activation '" + c.hidden_act + "' is not supported (silu, gelu_pytorch_tanh, gelu_new)");
  return c;
}

ModelConfig ModelConfig::load(const std::filesystem::path& model_dir) {
  auto path = model_dir / "config.json";
  std::ifstream in(path);
  if (!in) throw ModelLoadError(path.string() + ": cannot read config.json (is " + model_dir.string() + " a Hugging Face model directory?)");
  return from_json(io::read_json_file<ModelLoadError, json>(path, "config.json"), path.string());
}

}  // namespace llmtune::model
