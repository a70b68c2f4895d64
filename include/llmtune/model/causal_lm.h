// A Llama-family decoder-only model: embeddings, decoder layers (attention + gated MLP, each behind
// an RMSNorm with a residual), final norm and LM head. Families differ through their description
// (model/family.h: tensor names, fused projections) and the switches their config sets.
// Shapes: B batch, T new tokens, S keys (past + T), H hidden, V vocabulary.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "llmtune/model/config.h"
#include "llmtune/model/family.h"
#include "llmtune/model/kv_cache.h"
#include "llmtune/model/linear.h"

namespace llmtune::model {

// One decoder layer, laid out as its family's description says.
struct DecoderLayer {
  std::vector<at::Tensor> norms;   // (H,) each ((head_dim,) for per-head q/k norms), as FamilyDesc::norms
  std::vector<at::Tensor> norm_biases;  // LayerNorm families (GPT-2): each norm's bias; else empty
  std::vector<LinearPtr> linears;  // as FamilyDesc::linears (a fused one holds several projections)
};

struct PackedPlan;  // model/attention.h (private): per-forward preparation of PackedSegments

// Packed rows without a dense mask: each row of the batch holds independent sequences back to
// back, each attending causally within itself only; tokens past a row's sequences (padding)
// attend within their own run. Host-side, so building it costs O(B + sequences), not O(B·T²).
struct PackedSegments {
  std::vector<std::vector<int64_t>> lengths;  // per row, its sequences' lengths in order
};

struct ForwardOptions {
  KVCache* cache = nullptr;  // generation: keys/values of earlier calls are kept here
  at::Tensor positions;      // (B, T) int64; default: past .. past+T-1
  // (B, 1, T, S) bool, true where a query may attend to a key. Replaces the causal/sliding mask.
  at::Tensor attention_mask;
  // Packed training rows (no cache): variable-length flash attention on CUDA, SDPA over windows of whole sequences
  // elsewhere. Used instead of attention_mask when set.
  std::shared_ptr<const PackedSegments> packed;
};

class CausalLM {
 public:
  // Loads config.json and the safetensors weights of a Hugging Face model directory.
  // `linear` builds each linear layer (dense by default; a quantized kind plugs in here).
  static CausalLM load(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype,
                       const LinearFactory& linear = make_dense_linear);
  // A model of config.json's shape with transformers' initialization (weights ~ N(0,
  // initializer_range), biases 0, norms 1 (Gemma 0)), drawn from a generator seeded with `seed`.
  static CausalLM init_random(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype, uint64_t seed,
                              const LinearFactory& linear = make_dense_linear);

  const ModelConfig& config() const { return config_; }
  const FamilyDesc& family() const { return *family_; }
  c10::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }

  // input_ids: (B, T) int64 → final hidden states (B, T, H), after the final norm.
  at::Tensor forward_hidden(const at::Tensor& input_ids, const ForwardOptions& options = {}) const;
  // hidden: (..., H) → logits (..., V) in the model dtype (soft-capped when the family caps them).
  at::Tensor logits(const at::Tensor& hidden) const;
  // The LM head (a DenseLinear over the embeddings when tied). logits() is lm_head() plus the
  // final soft-cap, if any.
  const Linear& lm_head() const { return *lm_head_; }
  // The LM head's weight when logits() is a plain product with it (dense, no bias, no soft-cap):
  // chunked losses may then fuse it; nullptr otherwise.
  const at::Tensor* plain_head_weight() const;
  at::Tensor forward(const at::Tensor& input_ids, const ForwardOptions& options = {}) const {
    return logits(forward_hidden(input_ids, options));
  }

  KVCache make_cache(int64_t batch, int64_t max_len) const;
  // Longrope's original context: past it RoPE switches to the long factors, and cached keys from
  // before no longer match (generation recomputes once there). 0 for every other RoPE.
  int64_t rope_switch_length() const;

  // Layer-by-layer runs (calibration for pruning and quantization): the hidden states forward_hidden
  // starts from, input_ids (B, T) → (B, T, H); and decoder layer `index` alone on hidden states
  // x (B, T, H) → (B, T, H), with positions (B, T) (default 0..T-1), causal (and sliding) masks, no cache.
  at::Tensor embed(const at::Tensor& input_ids) const;
  at::Tensor forward_layer(int64_t index, const at::Tensor& x, const at::Tensor& positions = {}) const;

  std::vector<DecoderLayer>& layers() { return layers_; }
  // Every linear layer under its transformers module path ("model.layers.0.self_attn.q_proj",
  // "lm_head"), as a slot that adapters can replace with a wrapper.
  std::vector<std::pair<std::string, LinearPtr*>> named_linears();
  // The slot of one linear by module path; ModelLoadError listing an example path when absent.
  LinearPtr& linear(const std::string& path);
  const at::Tensor& embed_tokens() const { return embed_; }
  bool tied_embeddings() const { return tied_; }

  // Every weight under its transformers name, as a slot (full fine-tuning replaces them with
  // trainable copies; a tied lm_head is not listed: it follows model.embed_tokens.weight).
  // Slots of linears wrapped by an adapter are not listed.
  std::vector<std::pair<std::string, at::Tensor*>> named_weights();
  // Re-points a tied lm_head at the current embedding tensor (after named_weights() replaced it).
  void retie_embeddings();

  // Training: recompute each decoder layer in backward instead of keeping its activations.
  void set_gradient_checkpointing(bool enabled) { gradient_checkpointing_ = enabled; }

  // Builds the model from a source of tensors by transformers name and shape (the loaders and GGUF
  // import use it), each linear through `linear`.
  static CausalLM assemble(ModelConfig config, c10::Device device, at::ScalarType dtype, const TensorSource& get,
                           bool untied_lm_head, const LinearFactory& linear = make_dense_linear);

 private:
  struct Rotary;  // one forward's cos/sin tables (global, and the sliding layers' own when they differ)
  Rotary rotary(const at::Tensor& positions, at::ScalarType dtype) const;
  at::Tensor decoder_layer(const DecoderLayer& layer, int64_t index, const at::Tensor& x, const Rotary& rot,
                           const ForwardOptions& options, int64_t past, const PackedPlan* packed) const;
  // Norm `role` of `layer` (or the final norm when layer is nullptr) applied to x's last dimension.
  at::Tensor norm(const DecoderLayer* layer, NormRole role, const at::Tensor& x) const;
  bool has_norm(NormRole role) const { return norm_index_[static_cast<int>(role)] >= 0; }
  // Learned position embeddings of positions (B, T); DataError past the table.
  at::Tensor positions_embedding(const at::Tensor& positions) const;

  // out[p] = projection p of x, for every linear of `layer` whose outputs are in `wanted`.
  void project(const DecoderLayer& layer, const at::Tensor& x, std::initializer_list<Proj> wanted, at::Tensor* out) const;

  ModelConfig config_;
  const FamilyDesc* family_ = nullptr;
  int norm_index_[6] = {-1, -1, -1, -1, -1, -1};  // by NormRole: index into DecoderLayer::norms, -1 when absent
  c10::Device device_{c10::kCPU};
  at::ScalarType dtype_ = at::kFloat;
  at::Tensor embed_;       // (V, H)
  std::vector<DecoderLayer> layers_;
  at::Tensor final_norm_;  // (H,)
  at::Tensor final_norm_bias_;  // (H,) for LayerNorm families, else undefined
  at::Tensor pos_embed_;   // (max_position_embeddings, H) learned positions (GPT-2), else undefined
  LinearPtr lm_head_;
  at::Tensor inv_freq_;    // (R/2,) fp32, on the model's device (undefined without RoPE)
  at::Tensor inv_freq_local_;  // Gemma 3's sliding layers: their own (R/2,), else undefined
  double rope_scaling_ = 1.0, rope_scaling_local_ = 1.0;  // cos/sin factors (yarn, longrope)
  double embed_scale_ = 1.0;  // Gemma: sqrt(hidden) as the activation dtype rounds it
  bool tied_ = false;
  bool gradient_checkpointing_ = false;
};

}  // namespace llmtune::model
