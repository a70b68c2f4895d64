// The decoder forward pass, written out as transformers' LlamaModel computes it, with the family
// switches (Gemma's norm offset, embedding scale, sandwich norms and soft-caps, Qwen3/Gemma 3's
// per-head q/k norms, Qwen2 biases, sliding windows with their own RoPE, GPT-2's LayerNorms,
// learned positions and ungated MLP) and the family's layout (projections found by what they
// hold, fused ones split).
#include "llmtune/model/causal_lm.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/split_with_sizes.h>

#include <algorithm>
#include <cmath>

#include "llmtune/model/rope.h"
#include "llmtune/ops/gated_act.h"
#include "llmtune/ops/rms_norm.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/util/error.h"
#include "attention.h"
#include "recompute.h"

namespace llmtune::model {
namespace {

// A weight in the activations' dtype (trainable weights may be fp32 masters under bf16 compute).
at::Tensor as_dtype(const at::Tensor& w, at::ScalarType dtype) { return w.scalar_type() == dtype ? w : w.to(dtype); }

}  // namespace

void CausalLM::project(const DecoderLayer& layer, const at::Tensor& x, std::initializer_list<Proj> wanted,
                       at::Tensor* out) const {
  const auto& descs = family_->linears;
  for (size_t i = 0; i < descs.size(); ++i) {
    const auto& parts = descs[i].parts;
    if (std::find(wanted.begin(), wanted.end(), parts.front()) == wanted.end()) continue;
    at::Tensor y = layer.linears[i]->forward(x);
    if (parts.size() == 1) {
      out[static_cast<int>(parts[0])] = y;
      continue;
    }
    std::vector<int64_t> sizes;
    for (Proj p : parts) sizes.push_back(proj_out_features(config_, p));
    auto pieces = at::split_with_sizes(y, sizes, -1);
    for (size_t k = 0; k < parts.size(); ++k) out[static_cast<int>(parts[k])] = pieces[k];
  }
}

struct CausalLM::Rotary {
  at::Tensor cos, sin, cos_local, sin_local;  // (B, T, R); the local pair undefined unless it differs
};

CausalLM::Rotary CausalLM::rotary(const at::Tensor& positions, at::ScalarType dtype) const {
  Rotary r;
  if (config_.learned_positions) return r;
  at::Tensor inv_freq = inv_freq_;
  double scaling = rope_scaling_;
  if (rope_depends_on_length(config_.rope)) {
    // Dynamic NTK and longrope pick their tables from this forward's length (a host sync, for
    // those types only).
    const int64_t seq_len = positions.numel() ? positions.max().item<int64_t>() + 1 : 0;
    RopeTables t = rope_tables(config_.rope, config_.head_dim, config_.max_position_embeddings, seq_len);
    inv_freq = t.inv_freq.to(device_);
    scaling = t.attention_scaling;
  }
  std::tie(r.cos, r.sin) = rope_cos_sin(inv_freq, positions, dtype, scaling);
  if (inv_freq_local_.defined()) std::tie(r.cos_local, r.sin_local) = rope_cos_sin(inv_freq_local_, positions, dtype, rope_scaling_local_);
  return r;
}

at::Tensor CausalLM::norm(const DecoderLayer* layer, NormRole role, const at::Tensor& x) const {
  const auto& c = config_;
  const int k = norm_index_[static_cast<int>(role)];
  const at::Tensor& w = layer ? layer->norms[k] : final_norm_;
  if (family_->layer_norm) {
    const at::Tensor& b = layer ? layer->norm_biases[k] : final_norm_bias_;
    return at::layer_norm(x, {x.size(-1)}, as_dtype(w, x.scalar_type()), as_dtype(b, x.scalar_type()), c.rms_norm_eps);
  }
  return ops::rms_norm(x, as_dtype(w, x.scalar_type()), c.rms_norm_eps, c.norm_unit_offset);
}

at::Tensor CausalLM::decoder_layer(const DecoderLayer& layer, int64_t index, const at::Tensor& x, const Rotary& rot,
                                   const ForwardOptions& options, int64_t past, const PackedPlan* packed) const {
  const auto& c = config_;
  const int64_t b = x.size(0), t = x.size(1);
  at::Tensor proj[7];
  auto P = [&](Proj p) -> at::Tensor& { return proj[static_cast<int>(p)]; };
  // Attention: q (B, H_q, T, D), k/v (B, H_kv, T, D).
  at::Tensor h = norm(&layer, NormRole::Input, x);
  project(layer, h, {Proj::Q, Proj::K, Proj::V}, proj);
  at::Tensor q = P(Proj::Q).reshape({b, t, c.n_heads, c.head_dim});
  at::Tensor k = P(Proj::K).reshape({b, t, c.n_heads_kv, c.head_dim});
  if (has_norm(NormRole::QHead)) q = norm(&layer, NormRole::QHead, q);
  if (has_norm(NormRole::KHead)) k = norm(&layer, NormRole::KHead, k);
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  at::Tensor v = P(Proj::V).reshape({b, t, c.n_heads_kv, c.head_dim}).transpose(1, 2);
  const int64_t window = c.sliding_window_per_layer[index];
  if (rot.cos.defined()) {
    const bool local = window > 0 && rot.cos_local.defined();
    q = apply_rope(q, local ? rot.cos_local : rot.cos, local ? rot.sin_local : rot.sin);
    k = apply_rope(k, local ? rot.cos_local : rot.cos, local ? rot.sin_local : rot.sin);
  }
  if (options.cache) std::tie(k, v) = options.cache->update(index, k, v);

  const double scale = 1.0 / std::sqrt(c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar : static_cast<double>(c.head_dim));
  at::Tensor attn = attend(q, k, v, past, window, options.attention_mask, packed, scale, c.attn_logit_softcap);
  attn = attn.transpose(1, 2).reshape({b, t, c.n_heads * c.head_dim});
  project(layer, attn, {Proj::O}, proj);
  at::Tensor o = has_norm(NormRole::AttnOut) ? norm(&layer, NormRole::AttnOut, P(Proj::O)) : P(Proj::O);
  at::Tensor out = x + o;

  // MLP: down(act(gate(n)) * up(n)), or down(act(up(n))) without a gate (GPT-2).
  at::Tensor n = norm(&layer, NormRole::PostAttention, out);
  auto act = [&](const at::Tensor& a) { return c.hidden_act == "silu" ? at::silu(a) : at::gelu(a, "tanh"); };
  if (c.gated_mlp) {
    project(layer, n, {Proj::Gate, Proj::Up}, proj);
    const auto gate_act = c.hidden_act == "silu" ? ops::GateActivation::Silu : ops::GateActivation::GeluTanh;
    project(layer, ops::gated_activation(P(Proj::Gate), P(Proj::Up), gate_act), {Proj::Down}, proj);
  } else {
    project(layer, n, {Proj::Up}, proj);
    project(layer, act(P(Proj::Up)), {Proj::Down}, proj);
  }
  at::Tensor m = has_norm(NormRole::MlpOut) ? norm(&layer, NormRole::MlpOut, P(Proj::Down)) : P(Proj::Down);
  return out + m;
}

at::Tensor CausalLM::forward_hidden(const at::Tensor& input_ids, const ForwardOptions& options) const {
  TORCH_CHECK(input_ids.dim() == 2, "forward: input_ids must be (batch, tokens)");
  const int64_t past = options.cache ? options.cache->length() : 0;
  at::Tensor ids = input_ids.to(device_);
  at::Tensor positions = options.positions.defined()
                             ? options.positions.to(device_)
                             : at::arange(past, past + ids.size(1), at::TensorOptions().dtype(at::kLong).device(device_))
                                   .unsqueeze(0).expand({ids.size(0), ids.size(1)});
  at::Tensor h = embed(ids);
  if (pos_embed_.defined()) h = h + positions_embedding(positions);
  const Rotary rot = rotary(positions, h.scalar_type());
  std::optional<PackedPlan> plan;
  if (options.packed) {
    TORCH_CHECK(!options.cache, "forward: packed rows are for training and evaluation, not with a KV cache");
    const auto& w = config_.sliding_window_per_layer;
    plan = plan_packed(*options.packed, ids.size(0), ids.size(1), device_, h.scalar_type(),
                       w.empty() ? 0 : *std::max_element(w.begin(), w.end()), config_.attn_logit_softcap > 0);
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    const DecoderLayer& layer = layers_[i];
    const auto index = static_cast<int64_t>(i);
    if (gradient_checkpointing_ && !options.cache) {
      std::vector<at::Tensor> tensors = layer.norms;
      tensors.insert(tensors.end(), layer.norm_biases.begin(), layer.norm_biases.end());
      for (const LinearPtr& l : layer.linears) {
        auto t = l->tensors();
        tensors.insert(tensors.end(), t.begin(), t.end());
      }
      h = recompute_in_backward(
          [this, &layer, index, rot, options, past, plan](const at::Tensor& x) {
            return decoder_layer(layer, index, x, rot, options, past, plan ? &*plan : nullptr);
          },
          h, tensors);
    } else {
      h = decoder_layer(layer, index, h, rot, options, past, plan ? &*plan : nullptr);
    }
  }
  if (options.cache) options.cache->advance(ids.size(1));
  return norm(nullptr, NormRole::Input, h);
}

at::Tensor CausalLM::positions_embedding(const at::Tensor& positions) const {
  // Learned positions end at the table: a position past it is an error, not an index fault.
  const int64_t last = positions.numel() ? positions.max().item<int64_t>() : 0;
  if (last >= pos_embed_.size(0))
    throw DataError("position " + std::to_string(last) + " is past this " + config_.model_type + " model's " +
                    std::to_string(pos_embed_.size(0)) + " learned positions (n_positions); use shorter sequences");
  return at::embedding(as_dtype(pos_embed_, dtype_), positions);
}

at::Tensor CausalLM::embed(const at::Tensor& input_ids) const {
  at::Tensor h = at::embedding(as_dtype(embed_, dtype_), input_ids.to(device_));
  // Gemma: the scale is rounded to the activation dtype before multiplying.
  return config_.scale_embeddings ? h * embed_scale_ : h;
}

at::Tensor CausalLM::forward_layer(int64_t index, const at::Tensor& x, const at::Tensor& positions) const {
  TORCH_CHECK(index >= 0 && index < static_cast<int64_t>(layers_.size()) && x.dim() == 3,
              "forward_layer: layer ", index, " of ", layers_.size(), ", hidden states must be (batch, tokens, hidden)");
  const at::Tensor pos = positions.defined()
                             ? positions.to(device_)
                             : at::arange(x.size(1), at::TensorOptions().dtype(at::kLong).device(device_))
                                   .unsqueeze(0).expand({x.size(0), x.size(1)});
  return decoder_layer(layers_[static_cast<size_t>(index)], index, x, rotary(pos, x.scalar_type()), ForwardOptions{}, 0, nullptr);
}

at::Tensor CausalLM::logits(const at::Tensor& hidden) const {
  at::Tensor out = lm_head_->forward(hidden);
  const double cap = config_.final_logit_softcap;
  return cap > 0 ? at::tanh(out / cap) * cap : out;
}

int64_t CausalLM::rope_switch_length() const {
  const RopeConfig& r = config_.rope;
  return r.type == "longrope" && rope_depends_on_length(r) ? r.original_max_position_embeddings : 0;
}

const at::Tensor* CausalLM::plain_head_weight() const {
  const auto* dense = dynamic_cast<const DenseLinear*>(lm_head_.get());
  if (!dense || dense->bias().defined() || config_.final_logit_softcap > 0) return nullptr;
  return &dense->weight();
}

std::vector<std::pair<std::string, LinearPtr*>> CausalLM::named_linears() {
  std::vector<std::pair<std::string, LinearPtr*>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = family_->layers_prefix + std::to_string(i) + ".";
    for (size_t k = 0; k < family_->linears.size(); ++k) out.emplace_back(p + family_->linears[k].name, &layers_[i].linears[k]);
  }
  out.emplace_back(family_->lm_head, &lm_head_);
  return out;
}

LinearPtr& CausalLM::linear(const std::string& path) {
  for (auto& [name, slot] : named_linears())
    if (name == path) return *slot;
  throw ModelLoadError("no linear module '" + path + "' in this " + config_.model_type + " model (paths look like '" +
                       family_->layers_prefix + "0." + family_->linears.front().name + "')");
}

std::vector<std::pair<std::string, at::Tensor*>> CausalLM::named_weights() {
  std::vector<std::pair<std::string, at::Tensor*>> out;
  out.emplace_back(family_->embed + ".weight", &embed_);
  if (pos_embed_.defined()) out.emplace_back(family_->pos_embed + ".weight", &pos_embed_);
  auto add_linear = [&](const std::string& name, LinearPtr& slot) {
    // A wrapped (adapter) or quantized linear lists nothing: its base stays frozen.
    for (auto [suffix, tensor] : slot->parameter_slots()) out.emplace_back(name + "." + suffix, tensor);
  };
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = family_->layers_prefix + std::to_string(i) + ".";
    DecoderLayer& l = layers_[i];
    for (size_t k = 0; k < family_->norms.size(); ++k) {
      out.emplace_back(p + family_->norms[k].name + ".weight", &l.norms[k]);
      if (!l.norm_biases.empty()) out.emplace_back(p + family_->norms[k].name + ".bias", &l.norm_biases[k]);
    }
    for (size_t k = 0; k < family_->linears.size(); ++k) add_linear(p + family_->linears[k].name, l.linears[k]);
  }
  out.emplace_back(family_->final_norm + ".weight", &final_norm_);
  if (final_norm_bias_.defined()) out.emplace_back(family_->final_norm + ".bias", &final_norm_bias_);
  if (!tied_) add_linear(family_->lm_head, lm_head_);
  return out;
}

void CausalLM::retie_embeddings() {
  if (tied_) lm_head_ = std::make_shared<DenseLinear>(embed_);
}

KVCache CausalLM::make_cache(int64_t batch, int64_t max_len) const {
  const double elt = static_cast<double>(c10::elementSize(dtype_));
  const double cache = 2.0 * static_cast<double>(config_.n_layers) * static_cast<double>(batch) *
                       static_cast<double>(config_.n_heads_kv) * static_cast<double>(max_len) *
                       static_cast<double>(config_.head_dim) * elt;
  ops::check_fits(cache + parameter_count(*family_, config_, !tied_) * elt, device_,
                  "the model with a KV cache of " + std::to_string(max_len) + " positions",
                  "lower --max-new-tokens or shorten the prompt");
  return KVCache(config_.n_layers, batch, config_.n_heads_kv, max_len, config_.head_dim,
                 at::TensorOptions().dtype(dtype_).device(device_));
}

}  // namespace llmtune::model
