// The decoder forward pass, written out as transformers' LlamaModel computes it, with the family
// switches (Gemma's norm offset and embedding scale, GeGLU, Qwen2 biases, sliding windows).
#include "llmtune/model/causal_lm.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/silu.h>

#include <cmath>

#include "llmtune/model/rope.h"
#include "llmtune/ops/rms_norm.h"
#include "recompute.h"

namespace llmtune::model {
namespace {

// (1, 1, T, S) bool mask: query i (at position past + i) sees key j when j <= past + i and, with a
// sliding window W, j > past + i - W.
at::Tensor causal_mask(int64_t t, int64_t past, int64_t window, c10::Device device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor q = at::arange(past, past + t, opts).unsqueeze(1);
  at::Tensor k = at::arange(0, past + t, opts).unsqueeze(0);
  at::Tensor allowed = k <= q;
  if (window > 0) allowed = allowed.logical_and(k > q - window);
  return allowed.unsqueeze(0).unsqueeze(0);
}

// A weight in the activations' dtype (trainable weights may be fp32 masters under bf16 compute).
at::Tensor as_dtype(const at::Tensor& w, at::ScalarType dtype) { return w.scalar_type() == dtype ? w : w.to(dtype); }

}  // namespace

at::Tensor CausalLM::decoder_layer(const DecoderLayer& layer, int64_t index, const at::Tensor& x,
                                   const at::Tensor& cos, const at::Tensor& sin, const ForwardOptions& options,
                                   int64_t past) const {
  const auto& c = config_;
  const int64_t b = x.size(0), t = x.size(1);
  // Attention: q (B, H_q, T, D), k/v (B, H_kv, T, D).
  at::Tensor h = ops::rms_norm(x, as_dtype(layer.input_norm, x.scalar_type()), c.rms_norm_eps, c.norm_unit_offset);
  at::Tensor q = layer.q_proj->forward(h).view({b, t, c.n_heads, c.head_dim}).transpose(1, 2);
  at::Tensor k = layer.k_proj->forward(h).view({b, t, c.n_heads_kv, c.head_dim}).transpose(1, 2);
  at::Tensor v = layer.v_proj->forward(h).view({b, t, c.n_heads_kv, c.head_dim}).transpose(1, 2);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);
  if (options.cache) std::tie(k, v) = options.cache->update(index, k, v);

  const int64_t window = c.sliding_window_per_layer[index];
  const int64_t s = k.size(2);
  std::optional<at::Tensor> mask;
  bool is_causal = false;
  if (options.attention_mask.defined()) {
    mask = options.attention_mask;
  } else if (past == 0 && (window == 0 || window >= s)) {
    is_causal = t > 1;  // the fused kernels' own causal masking
  } else if (t > 1 || (window > 0 && window < s)) {
    mask = causal_mask(t, past, window, x.device());
  }
  at::Tensor attn = at::scaled_dot_product_attention(q, k, v, mask, 0.0, is_causal,
                                                     1.0 / std::sqrt(static_cast<double>(c.head_dim)),
                                                     /*enable_gqa=*/c.n_heads != c.n_heads_kv);
  attn = attn.transpose(1, 2).reshape({b, t, c.n_heads * c.head_dim});
  at::Tensor out = x + layer.o_proj->forward(attn);

  // Gated MLP: down(act(gate(n)) * up(n)).
  at::Tensor n = ops::rms_norm(out, as_dtype(layer.post_attention_norm, out.scalar_type()), c.rms_norm_eps,
                               c.norm_unit_offset);
  at::Tensor gate = layer.gate_proj->forward(n);
  gate = c.hidden_act == "silu" ? at::silu(gate) : at::gelu(gate, "tanh");
  return out + layer.down_proj->forward(gate * layer.up_proj->forward(n));
}

at::Tensor CausalLM::forward_hidden(const at::Tensor& input_ids, const ForwardOptions& options) const {
  TORCH_CHECK(input_ids.dim() == 2, "forward: input_ids must be (batch, tokens)");
  const int64_t past = options.cache ? options.cache->length() : 0;
  at::Tensor ids = input_ids.to(device_);
  at::Tensor h = at::embedding(as_dtype(embed_, dtype_), ids);
  if (config_.scale_embeddings) {
    // Gemma: the scale is rounded to the activation dtype before multiplying.
    h = h * at::scalar_tensor(std::sqrt(static_cast<double>(config_.hidden_size)), at::TensorOptions().dtype(at::kFloat))
                .to(h.scalar_type()).to(h.device());
  }
  at::Tensor positions = options.positions.defined()
                             ? options.positions.to(device_)
                             : at::arange(past, past + ids.size(1), at::TensorOptions().dtype(at::kLong).device(device_))
                                   .unsqueeze(0).expand({ids.size(0), ids.size(1)});
  auto [cos, sin] = rope_cos_sin(inv_freq_, positions, h.scalar_type());
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& layer = layers_[i];
    const auto index = static_cast<int64_t>(i);
    if (gradient_checkpointing_ && !options.cache) {
      std::vector<at::Tensor> tensors = {layer.input_norm, layer.post_attention_norm};
      for (const LinearPtr* l : {&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj, &layer.gate_proj,
                                 &layer.up_proj, &layer.down_proj}) {
        auto t = (*l)->tensors();
        tensors.insert(tensors.end(), t.begin(), t.end());
      }
      h = recompute_in_backward(
          [this, &layer, index, cos, sin, options, past](const at::Tensor& x) {
            return decoder_layer(layer, index, x, cos, sin, options, past);
          },
          h, tensors);
    } else {
      h = decoder_layer(layer, index, h, cos, sin, options, past);
    }
  }
  if (options.cache) options.cache->advance(ids.size(1));
  return ops::rms_norm(h, as_dtype(final_norm_, h.scalar_type()), config_.rms_norm_eps, config_.norm_unit_offset);
}

at::Tensor CausalLM::logits(const at::Tensor& hidden) const { return lm_head_->forward(hidden); }

std::vector<std::pair<std::string, LinearPtr*>> CausalLM::named_linears() {
  std::vector<std::pair<std::string, LinearPtr*>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer& l = layers_[i];
    for (auto [name, slot] : {std::pair{"self_attn.q_proj", &l.q_proj}, {"self_attn.k_proj", &l.k_proj},
                              {"self_attn.v_proj", &l.v_proj}, {"self_attn.o_proj", &l.o_proj},
                              {"mlp.gate_proj", &l.gate_proj}, {"mlp.up_proj", &l.up_proj},
                              {"mlp.down_proj", &l.down_proj}})
      out.emplace_back(p + name, slot);
  }
  out.emplace_back("lm_head", &lm_head_);
  return out;
}

std::vector<std::pair<std::string, at::Tensor*>> CausalLM::named_weights() {
  std::vector<std::pair<std::string, at::Tensor*>> out;
  out.emplace_back("model.embed_tokens.weight", &embed_);
  auto add_linear = [&](const std::string& name, LinearPtr& slot) {
    auto* dense = dynamic_cast<DenseLinear*>(slot.get());
    if (!dense) return;  // wrapped by an adapter: its base stays frozen
    out.emplace_back(name + ".weight", &dense->mutable_weight());
    if (dense->bias().defined()) out.emplace_back(name + ".bias", &dense->mutable_bias());
  };
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer& l = layers_[i];
    out.emplace_back(p + "input_layernorm.weight", &l.input_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", &l.post_attention_norm);
    for (auto [name, slot] : {std::pair{"self_attn.q_proj", &l.q_proj}, {"self_attn.k_proj", &l.k_proj},
                              {"self_attn.v_proj", &l.v_proj}, {"self_attn.o_proj", &l.o_proj},
                              {"mlp.gate_proj", &l.gate_proj}, {"mlp.up_proj", &l.up_proj},
                              {"mlp.down_proj", &l.down_proj}})
      add_linear(p + name, *slot);
  }
  out.emplace_back("model.norm.weight", &final_norm_);
  if (!tied_) add_linear("lm_head", lm_head_);
  return out;
}

void CausalLM::retie_embeddings() {
  if (tied_) lm_head_ = std::make_shared<DenseLinear>(embed_);
}

KVCache CausalLM::make_cache(int64_t batch, int64_t max_len) const {
  return KVCache(config_.n_layers, batch, config_.n_heads_kv, max_len, config_.head_dim,
                 at::TensorOptions().dtype(dtype_).device(device_));
}

}  // namespace llmtune::model
