// The general.* and <arch>.* keys of a GGUF model file as llama.cpp's convert_hf_to_gguf.py writes
// them for each architecture (its TextModel base set, LlamaModel's, and the Gemma, Gemma 2/3, Phi-3
// and GPT-2 classes' own; order and types included), and back: config.json's fields from those
// keys, with llama.cpp's defaults where the converter writes nothing (FORMATS.md §6.5).
//
// Where a model departs from what llama.cpp assumes for its architecture and the converter has no
// key for it — a Gemma 2/3 query_pre_attn_scalar other than the one llama.cpp derives, a sliding
// layer pattern other than its fixed period, a Gemma 2 rope_theta other than 10000 — the export
// adds gguf-py's key for it after the converter's (attention.scale,
// attention.sliding_window_pattern, rope.freq_base), says what llama.cpp will do with it, and the
// import reads it back, so that a round trip keeps the model.
#include <spdlog/spdlog.h>

#include <charconv>
#include <cmath>

#include "gguf_arch.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines::gguf_detail {

double shortest(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), static_cast<float>(v));
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

namespace {

using model::GgufKeys;
using model::ModelConfig;
using nlohmann::json;

struct KeyWriter {
  io::GgufWriter& w;
  std::string p;  // "<arch>."
  void u32(const std::string& k, int64_t v) { w.add_u32(p + k, static_cast<uint32_t>(v)); }
  void f32(const std::string& k, double v) { w.add_f32(p + k, static_cast<float>(v)); }
};

int64_t max_window(const ModelConfig& c) {
  int64_t w = 0;
  for (int64_t v : c.sliding_window_per_layer) w = std::max(w, v);
  return w;
}

// llama.cpp's fixed sliding pattern (llama_hparams::set_swa_pattern): every layer slides but each
// period-th; Gemma 2 alternates from layer 0, Gemma 3 has five sliding layers per global one.
int64_t swa_period(GgufKeys keys) { return keys == GgufKeys::Gemma2 ? 2 : 6; }
bool llama_cpp_slides(int64_t layer, int64_t period) { return period == 0 || layer % period < period - 1; }

// The attention scale's divisor llama.cpp uses for Gemma 2/3: n_embd / n_head for the 27B models
// (recognised by their layer count), head_dim otherwise. It reads no key for it.
int64_t llama_cpp_attn_scalar(const ModelConfig& c, GgufKeys keys) {
  const int64_t layers_27b = keys == GgufKeys::Gemma2 ? 46 : 62;
  return c.n_layers == layers_27b ? c.hidden_size / c.n_heads : c.head_dim;
}

// The Phi-3 converter's pretraining context: the top-level key (Phi3Config's), else the rope
// dict's, else Phi3Config's default.
int64_t phi3_original_context(const ModelConfig& c, const json& raw) {
  if (c.rope.type == "longrope") return c.rope.original_max_position_embeddings;
  if (auto it = raw.find("original_max_position_embeddings"); it != raw.end() && it->is_number_integer()) return it->get<int64_t>();
  return 4096;
}

// Phi-3 longrope's attention factor as transformers applies it: the config's, else
// sqrt(1 + ln(factor) / ln(original context)) — the converter's formula, with its scale.
double longrope_attn_factor(const ModelConfig& c) {
  if (c.rope.attention_factor) return *c.rope.attention_factor;
  const double scale = c.rope.factor;
  return scale > 1.0 ? std::sqrt(1 + std::log(scale) / std::log(static_cast<double>(c.rope.original_max_position_embeddings)))
                     : 1.0;
}

// TextModel.set_gguf_parameters: the keys of every architecture without its own set (qwen2,
// qwen3), and the start of LlamaModel's and Gemma3Model's.
void text_keys(KeyWriter& k, const ModelConfig& c, bool head_dim, uint32_t file_type) {
  k.u32("block_count", c.n_layers);
  k.u32("context_length", c.max_position_embeddings);
  k.u32("embedding_length", c.hidden_size);
  k.u32("feed_forward_length", c.intermediate_size);
  k.u32("attention.head_count", c.n_heads);
  k.u32("attention.head_count_kv", c.n_heads_kv);
  if (c.rope.type == "linear") {
    k.w.add_string(k.p + "rope.scaling.type", "linear");
    k.f32("rope.scaling.factor", c.rope.factor);
  }
  k.f32("rope.freq_base", c.rope.theta);
  if (c.rope_local) k.f32("rope.freq_base_swa", c.rope_local->theta);  // rope_parameters.sliding_attention
  k.f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  if (head_dim) {
    k.u32("attention.key_length", c.head_dim);
    k.u32("attention.value_length", c.head_dim);
  }
  k.w.add_u32("general.file_type", file_type);
}

// Gemma 2/3: the keys llama.cpp has no counterpart for, when the model needs them (see the top).
void gemma_extensions(KeyWriter& k, const ModelConfig& c, GgufKeys keys, const std::string& arch) {
  if (keys == GgufKeys::Gemma2 && c.rope.theta != 10000.0) k.f32("rope.freq_base", c.rope.theta);  // llama.cpp reads it
  const double scalar = c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar : static_cast<double>(c.head_dim);
  const int64_t assumed = llama_cpp_attn_scalar(c, keys);
  if (static_cast<float>(1 / std::sqrt(scalar)) != static_cast<float>(1 / std::sqrt(static_cast<double>(assumed)))) {
    k.f32("attention.scale", 1 / std::sqrt(scalar));
    spdlog::warn("GGUF export: query_pre_attn_scalar is {} where llama.cpp's {} assumes {}; the file carries {}attention.scale, "
                 "which llmtune reads back and llama.cpp ignores", scalar, arch, assumed, k.p);
  }
  const int64_t period = swa_period(keys);
  const bool windowed = max_window(c) > 0;
  json pattern = json::array();
  bool differs = false;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const bool slides = c.sliding_window_per_layer[static_cast<size_t>(i)] > 0;
    // Gemma 3 without a sliding_window key has no sliding layers in llama.cpp; Gemma 2 always has.
    const bool llama_cpp = (windowed || keys == GgufKeys::Gemma2) && llama_cpp_slides(i, period);
    differs |= slides != llama_cpp;
    pattern.push_back(slides);
  }
  if (differs) {
    k.w.add(k.p + "attention.sliding_window_pattern", {io::GgufValueType::ARRAY, io::GgufValueType::BOOL, pattern});
    spdlog::warn("GGUF export: the sliding-window layers {} are not llama.cpp's {} pattern (every layer but each {}-th); the file "
                 "carries {}attention.sliding_window_pattern, which llmtune reads back and llama.cpp's {} ignores",
                 pattern.dump(), arch, period, k.p, arch);
  }
}

}  // namespace

void write_model_metadata(io::GgufWriter& w, const ModelConfig& c, const json& raw, const model::FamilyDesc& family,
                          const quant::FileType& ft, const std::string& name) {
  const model::GgufDesc& a = family.gguf;
  KeyWriter k{w, a.arch + "."};
  const bool longrope = a.keys == GgufKeys::Phi3 && c.rope.type == "longrope" && !c.rope.long_factor.empty();
  w.add_string("general.architecture", a.arch);
  // Phi-3 sets it while generating the rope factor tensors, which the converter does first.
  if (longrope) k.f32("rope.scaling.attn_factor", longrope_attn_factor(c));
  w.add_string("general.type", "model");
  w.add_string("general.name", name);
  const bool explicit_head_dim = raw.contains("head_dim") && !raw["head_dim"].is_null();
  bool rope_written = c.rope.type == "default" || c.rope.type == "llama3";
  const int64_t window = max_window(c);
  switch (a.keys) {
    case GgufKeys::Gemma:
    case GgufKeys::Gemma2:
      k.u32("context_length", c.max_position_embeddings);
      k.u32("embedding_length", c.hidden_size);
      k.u32("block_count", c.n_layers);
      k.u32("feed_forward_length", c.intermediate_size);
      k.u32("attention.head_count", c.n_heads);
      k.u32("attention.head_count_kv", c.n_heads_kv);
      k.f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
      k.u32("attention.key_length", c.head_dim);
      k.u32("attention.value_length", c.head_dim);
      if (a.keys == GgufKeys::Gemma) {
        k.f32("rope.freq_base", c.rope.theta);  // llama.cpp's default is 10000
        w.add_u32("general.file_type", ft.id);
        break;
      }
      w.add_u32("general.file_type", ft.id);
      // A null cap in config.json has no converter form; llama.cpp then caps at 50 / 30.
      if (c.attn_logit_softcap > 0) k.f32("attn_logit_softcapping", c.attn_logit_softcap);
      else spdlog::warn("GGUF export: gemma2 without attn_logit_softcapping; llama.cpp will cap attention scores at 50");
      if (c.final_logit_softcap > 0) k.f32("final_logit_softcapping", c.final_logit_softcap);
      else spdlog::warn("GGUF export: gemma2 without final_logit_softcapping; llama.cpp will cap logits at 30");
      if (window > 0) k.u32("attention.sliding_window", window);
      gemma_extensions(k, c, a.keys, a.arch);
      break;
    case GgufKeys::Gemma3:
      if (c.attn_logit_softcap > 0)
        throw ModelLoadError("GGUF export: gemma3 with attn_logit_softcapping has no GGUF form (llama.cpp's converter refuses it)");
      text_keys(k, c, true, ft.id);
      rope_written |= c.rope.type == "linear";
      if (c.final_logit_softcap > 0) k.f32("final_logit_softcapping", c.final_logit_softcap);
      if (window > 0) k.u32("attention.sliding_window", window);
      gemma_extensions(k, c, a.keys, a.arch);
      break;
    case GgufKeys::Phi3: {
      const int64_t rope_dims = static_cast<int64_t>(c.rope.partial_rotary_factor * static_cast<double>(c.hidden_size)) / c.n_heads;
      k.u32("context_length", c.max_position_embeddings);
      k.u32("rope.scaling.original_context_length", phi3_original_context(c, raw));
      k.u32("embedding_length", c.hidden_size);
      k.u32("feed_forward_length", c.intermediate_size);
      k.u32("block_count", c.n_layers);
      k.u32("attention.head_count", c.n_heads);
      k.u32("attention.head_count_kv", c.n_heads_kv);
      k.f32("attention.layer_norm_rms_epsilon", c.rms_norm_eps);
      k.u32("rope.dimension_count", rope_dims);
      k.f32("rope.freq_base", c.rope.theta);
      w.add_u32("general.file_type", ft.id);
      k.u32("attention.sliding_window", window);  // 0: none (how llama.cpp tells Phi-4 apart)
      rope_written |= longrope;
      break;
    }
    case GgufKeys::Gpt2:
      k.u32("block_count", c.n_layers);
      k.u32("context_length", c.max_position_embeddings);
      k.u32("embedding_length", c.hidden_size);
      // The converter writes 4·n_embd whatever n_inner says; the tensors' width is what llama.cpp needs.
      k.u32("feed_forward_length", c.intermediate_size);
      k.u32("attention.head_count", c.n_heads);
      k.f32("attention.layer_norm_epsilon", c.rms_norm_eps);
      w.add_u32("general.file_type", ft.id);
      break;
    case GgufKeys::Text:
    case GgufKeys::Llama:
      text_keys(k, c, explicit_head_dim, ft.id);
      rope_written |= c.rope.type == "linear";
      if (a.keys == GgufKeys::Llama) {
        k.u32("vocab_size", c.vocab_size);
        k.u32("rope.dimension_count", c.head_dim);
      }
      break;
  }
  if (!rope_written)
    spdlog::warn("GGUF export: RoPE scaling '{}' is not written for the {} architecture; llama.cpp will run it unscaled",
                 c.rope.type, a.arch);
  w.add_u32("general.quantization_version", 2);
}

json config_from_metadata(const io::GgufFile& f, const model::FamilyDesc& family) {
  const model::GgufDesc& a = family.gguf;
  const std::string p = a.arch + ".";
  const std::string src = f.path().string();
  json j;
  j["model_type"] = family.model_type;
  j["hidden_size"] = f.get_int(p + "embedding_length");
  j["num_hidden_layers"] = f.get_int(p + "block_count");
  j["intermediate_size"] = f.get_int(p + "feed_forward_length");
  const int64_t layers = j["num_hidden_layers"].get<int64_t>();
  const int64_t heads = f.get_int(p + "attention.head_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = f.get_int_opt(p + "attention.head_count_kv").value_or(heads);
  // Phi-3's rope.dimension_count is the rotating part of a head, not the head.
  if (auto kl = f.get_int_opt(p + "attention.key_length")) j["head_dim"] = *kl;
  else if (auto rd = f.get_int_opt(p + "rope.dimension_count"); rd && a.keys != GgufKeys::Phi3) j["head_dim"] = *rd;
  j["max_position_embeddings"] = f.get_int(p + "context_length");
  if (family.layer_norm) j["layer_norm_epsilon"] = shortest(f.get_float(p + "attention.layer_norm_epsilon"));
  else j["rms_norm_eps"] = shortest(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  j["rope_theta"] = shortest(f.get_float_opt(p + "rope.freq_base").value_or(10000.0));
  if (auto st = f.get_string_opt(p + "rope.scaling.type"); st && *st != "none") {
    if (*st != "linear")
      throw ModelLoadError(src + ": rope scaling '" + *st + "' is not supported (none, linear)");
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", shortest(f.get_float(p + "rope.scaling.factor"))}};
  }
  if (auto v = f.get_int_opt(p + "vocab_size")) j["vocab_size"] = *v;
  else if (const auto* t = f.find_tensor("token_embd.weight"); t && t->ne.size() == 2) j["vocab_size"] = t->ne[1];
  else throw ModelLoadError(src + ": tensor 'token_embd.weight' is missing");
  j["tie_word_embeddings"] = f.find_tensor("output.weight") == nullptr;
  j["attention_bias"] = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  j["mlp_bias"] = f.find_tensor("blk.0.ffn_gate.bias") != nullptr;

  if (a.keys == GgufKeys::Gemma || a.keys == GgufKeys::Gemma2 || a.keys == GgufKeys::Gemma3)
    j["hidden_activation"] = "gelu_pytorch_tanh";
  if (a.keys == GgufKeys::Gemma2 || a.keys == GgufKeys::Gemma3) {
    const bool gemma2 = a.keys == GgufKeys::Gemma2;
    // llama.cpp's defaults: Gemma 2 caps at 50 / 30 and slides over 4096 tokens; Gemma 3 has no caps.
    if (gemma2) j["attn_logit_softcapping"] = shortest(f.get_float_opt(p + "attn_logit_softcapping").value_or(50.0));
    else j["attn_logit_softcapping"] = nullptr;
    const double final_cap = f.get_float_opt(p + "final_logit_softcapping").value_or(gemma2 ? 30.0 : 0.0);
    j["final_logit_softcapping"] = final_cap > 0 ? json(shortest(final_cap)) : json(nullptr);
    const auto window = f.get_int_opt(p + "attention.sliding_window");
    const int64_t w = window.value_or(gemma2 ? 4096 : 0);
    j["sliding_window"] = w > 0 ? json(w) : json(nullptr);
    json types = json::array();
    const io::GgufValue* pattern = f.find(p + "attention.sliding_window_pattern");
    for (int64_t i = 0; i < layers; ++i) {
      bool slides = w > 0 && llama_cpp_slides(i, swa_period(a.keys));
      if (pattern && pattern->type == io::GgufValueType::ARRAY) {
        if (pattern->elem_type != io::GgufValueType::BOOL || static_cast<int64_t>(pattern->value.size()) != layers)
          throw ModelLoadError(src + ": " + p + "attention.sliding_window_pattern must hold one bool per layer (" +
                               std::to_string(layers) + ")");
        slides = w > 0 && pattern->value[static_cast<size_t>(i)].get<bool>();
      } else if (pattern) {
        slides = w > 0 && llama_cpp_slides(i, f.get_int(p + "attention.sliding_window_pattern"));
      }
      types.push_back(slides ? "sliding_attention" : "full_attention");
    }
    j["layer_types"] = types;
    ModelConfig shape;  // llama.cpp's attention scalar needs the head shape
    shape.n_layers = layers;
    shape.hidden_size = j["hidden_size"].get<int64_t>();
    shape.n_heads = heads;
    shape.head_dim = j.contains("head_dim") ? j["head_dim"].get<int64_t>() : shape.hidden_size / heads;
    if (auto s = f.get_float_opt(p + "attention.scale"); s && *s > 0) j["query_pre_attn_scalar"] = shortest(1 / (*s * *s));
    else j["query_pre_attn_scalar"] = llama_cpp_attn_scalar(shape, a.keys);
    if (!gemma2) {
      // The global layers take the (scaled) rope; the sliding ones their own base, unscaled.
      json full = {{"rope_type", "default"}, {"rope_theta", j["rope_theta"]}};
      if (j.contains("rope_scaling")) full = {{"rope_type", "linear"}, {"factor", j["rope_scaling"]["factor"]}, {"rope_theta", j["rope_theta"]}};
      j["rope_parameters"] = {{"full_attention", full},
                              {"sliding_attention", {{"rope_type", "default"},
                                                     {"rope_theta", shortest(f.get_float_opt(p + "rope.freq_base_swa").value_or(10000.0))}}}};
      j.erase("rope_scaling");
    }
  }
  if (a.keys == GgufKeys::Phi3) {
    const int64_t head_dim = j["hidden_size"].get<int64_t>() / heads;
    const int64_t original = f.get_int_opt(p + "rope.scaling.original_context_length").value_or(4096);
    j["original_max_position_embeddings"] = original;
    if (auto rd = f.get_int_opt(p + "rope.dimension_count"); rd && *rd != head_dim) {
      // transformers rotates int(head_dim · factor) dims: the smallest factor that gives rd.
      double factor = static_cast<double>(*rd) / static_cast<double>(head_dim);
      while (static_cast<int64_t>(static_cast<double>(head_dim) * factor) < *rd) factor = std::nextafter(factor, 2.0);
      j["partial_rotary_factor"] = factor;
    }
    const int64_t window = f.get_int_opt(p + "attention.sliding_window").value_or(0);
    j["sliding_window"] = window > 0 ? json(window) : json(nullptr);
    const auto* lf = f.find_tensor("rope_factors_long.weight");
    const auto* sf = f.find_tensor("rope_factors_short.weight");
    if (lf || sf) {
      if (!lf || !sf) throw ModelLoadError(src + ": Phi-3 longrope needs both rope_factors_long and rope_factors_short");
      auto values = [&](const io::GgufTensorInfo& t) {
        at::Tensor v = gguf_tensor_float(f, t, {t.n_elements()});
        json out = json::array();
        for (int64_t i = 0; i < v.numel(); ++i) out.push_back(shortest(v[i].item<float>()));
        return out;
      };
      json rope = {{"rope_type", "longrope"}, {"rope_theta", j["rope_theta"]}, {"long_factor", values(*lf)},
                   {"short_factor", values(*sf)}};
      if (j.contains("partial_rotary_factor")) rope["partial_rotary_factor"] = j["partial_rotary_factor"];
      // The attention factor is transformers' default unless the file says otherwise.
      const int64_t ctx = j["max_position_embeddings"].get<int64_t>();
      const double scale = static_cast<double>(ctx) / static_cast<double>(original);
      const double by_default = scale > 1.0 ? std::sqrt(1 + std::log(scale) / std::log(static_cast<double>(original))) : 1.0;
      if (auto af = f.get_float_opt(p + "rope.scaling.attn_factor"); af && static_cast<float>(*af) != static_cast<float>(by_default))
        rope["attention_factor"] = shortest(*af);
      j["rope_scaling"] = rope;
    }
  }
  return j;
}

}  // namespace llmtune::pipelines::gguf_detail
