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
  std::string type = "default";  // default | linear | llama3 | dynamic | yarn | longrope
  double theta = 10000.0;
  // linear, llama3, dynamic, yarn: the context multiplier. longrope: the rope dict's `factor`, else
  // max_position_embeddings / original_max_position_embeddings (parse_rope fills it in).
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3, yarn, longrope: the pretraining context. As transformers 5 resolves it: a top-level
  // config key (Phi-3 keeps it there), else the rope dict's, else max_position_embeddings.
  int64_t original_max_position_embeddings = 8192;
  // The fraction of head_dim that rotates (Phi-4-mini: 0.75); the rope dict's, else the top level's.
  double partial_rotary_factor = 1.0;
  // yarn: the ramp between interpolated and extrapolated frequencies (0 in the config means the
  // default, as transformers' `or` does), whether its bounds are rounded outwards, and the mscale
  // pair for the default attention factor (0: absent).
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  // yarn, longrope: cos/sin are multiplied by it; absent: derived from factor (rope_tables).
  std::optional<double> attention_factor;
  // longrope: per-frequency divisors (rotary_dim/2 each), the long set once a forward's length
  // passes original_max_position_embeddings.
  std::vector<double> short_factor, long_factor;
  // Explicit per-frequency divisors (head_dim/2), as a GGUF's rope_freqs.weight stores them:
  // inv_freq[i] = 1 / (theta^(2i/d) · freq_factors[i]). Empty: computed from `type`.
  std::vector<float> freq_factors;
};

// A rope_parameters (transformers 5) or rope_scaling + rope_theta (4.x) section of `j`, parsed;
// ModelLoadError naming `source` on a bad value.
RopeConfig parse_rope_json(const nlohmann::json& j, const std::string& source);

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
  double rms_norm_eps = 1e-6;  // the norms' epsilon (GPT-2's layer_norm_epsilon for its LayerNorms)
  double initializer_range = 0.02;  // std of the normal init (model.init: random)
  RopeConfig rope;
  std::string hidden_act = "silu";  // silu | gelu_pytorch_tanh | gelu_new (the same tanh GELU)
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // bias on q/k/v (attention_bias, or always for qwen2)
  bool o_bias = false;    // bias on o_proj (attention_bias)
  bool mlp_bias = false;
  // Per layer: the sliding-window size, or 0 for full attention.
  std::vector<int64_t> sliding_window_per_layer;
  // Gemma: RMSNorm scales by (1 + w), embeddings are multiplied by sqrt(hidden_size).
  bool norm_unit_offset = false;
  bool scale_embeddings = false;
  // Gemma 2/3: attention scores scaled by query_pre_attn_scalar^-1/2 (0: head_dim^-1/2); scores and
  // final logits soft-capped as cap·tanh(x/cap) (0: none).
  double query_pre_attn_scalar = 0;
  double attn_logit_softcap = 0;
  double final_logit_softcap = 0;
  // Gemma 3: the sliding-window layers use their own, unscaled RoPE (rope_local_base_freq).
  std::optional<RopeConfig> rope_local;
  // GPT-2: the MLP is down(act(up(x))) with no gate; positions are learned embeddings, not RoPE.
  bool gated_mlp = true;
  bool learned_positions = false;
  // The largest dropout probability config.json sets for the model itself (attention_dropout,
  // GPT-2's attn/resid/embd_pdrop): llmtune applies none (only the adapter's own dropout).
  double dropout = 0;
  std::optional<int64_t> bos_token_id, pad_token_id;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;  // the checkpoint's dtype ("bfloat16", ...), "" when absent

  // Parses config.json's content; `source` names the file in errors (ModelLoadError).
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const std::filesystem::path& model_dir);
};

}  // namespace llmtune::model
