// ModelConfig: one struct for every supported Llama-family decoder, parsed from config.json in
// both the transformers 4.x and 5.x spellings (rope_scaling/rope_parameters, torch_dtype/dtype).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace llmtune::model {

struct RopeConfig {
  std::string type = "default";  // default | linear | llama3
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
  // Explicit per-frequency divisors (head_dim/2), as a GGUF's rope_freqs.weight stores them:
  // inv_freq[i] = 1 / (theta^(2i/d) · freq_factors[i]). Empty: computed from `type`.
  std::vector<float> freq_factors;
};

struct ModelConfig {
  std::string model_type;  // a registered family (model/family.h): llama | mistral | qwen2 | gemma
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_heads_kv = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double initializer_range = 0.02;  // std of the normal init (model.init: random)
  RopeConfig rope;
  std::string hidden_act = "silu";  // silu | gelu_pytorch_tanh
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // bias on q/k/v (attention_bias, or always for qwen2)
  bool o_bias = false;    // bias on o_proj (attention_bias)
  bool mlp_bias = false;
  // Per layer: the sliding-window size, or 0 for full attention.
  std::vector<int64_t> sliding_window_per_layer;
  // Gemma: RMSNorm scales by (1 + w), embeddings are multiplied by sqrt(hidden_size).
  bool norm_unit_offset = false;
  bool scale_embeddings = false;
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;  // the checkpoint's dtype ("bfloat16", ...), "" when absent

  // Parses config.json's content; `source` names the file in errors (ModelLoadError).
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const std::filesystem::path& model_dir);
};

}  // namespace llmtune::model
