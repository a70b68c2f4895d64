// Loading a Hugging Face model directory into a CausalLM: config, then each expected tensor by
// its transformers name, checked for shape, moved to the device and dtype (no copy when both
// already match: CPU tensors then stay views of the memory-mapped file).
#include <spdlog/spdlog.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include <set>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/model/rope.h"
#include "llmtune/util/error.h"

namespace llmtune::model {
namespace {

class WeightLoader {
 public:
  WeightLoader(const io::Checkpoint& ckpt, const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype)
      : ckpt_(ckpt), dir_(dir), device_(device), dtype_(dtype) {}

  at::Tensor get(const std::string& name, std::vector<int64_t> shape) {
    if (!ckpt_.contains(name))
      throw ModelLoadError(dir_.string() + ": tensor '" + name + "' is missing from the checkpoint (is config.json from the same model?)");
    at::Tensor t = ckpt_.tensor(name);
    if (t.sizes() != at::IntArrayRef(shape)) {
      throw ModelLoadError(dir_.string() + ": tensor '" + name + "' has shape " + c10::str(t.sizes()) + " but config.json implies " +
                           c10::str(at::IntArrayRef(shape)));
    }
    used_.insert(name);
    return t.to(device_, dtype_);
  }

  // Tensors in the file that the model does not use: rotary buffers of old exports are expected;
  // anything else is said once, with a count.
  void report_unused() const {
    size_t unused = 0;
    std::string example;
    for (const auto& n : ckpt_.names()) {
      if (used_.count(n) || n.ends_with("rotary_emb.inv_freq")) continue;
      if (example.empty()) example = n;
      ++unused;
    }
    if (unused) spdlog::warn("{}: {} tensor(s) in the checkpoint are not used by the model (e.g. '{}')", dir_.string(), unused, example);
  }

 private:
  const io::Checkpoint& ckpt_;
  std::filesystem::path dir_;
  c10::Device device_;
  at::ScalarType dtype_;
  std::set<std::string> used_;
};

}  // namespace

CausalLM CausalLM::assemble(ModelConfig config, c10::Device device, at::ScalarType dtype, const TensorSource& get,
                            bool untied_lm_head) {
  CausalLM m;
  m.config_ = std::move(config);
  m.device_ = device;
  m.dtype_ = dtype;
  const ModelConfig& c = m.config_;
  auto linear = [&](const std::string& prefix, int64_t out, int64_t in, bool bias) {
    at::Tensor w = get(prefix + ".weight", {out, in});
    at::Tensor b = bias ? get(prefix + ".bias", {out}) : at::Tensor();
    return std::make_shared<DenseLinear>(w, b);
  };
  const int64_t hidden = c.hidden_size, q_out = c.n_heads * c.head_dim, kv_out = c.n_heads_kv * c.head_dim;
  m.embed_ = get("model.embed_tokens.weight", {c.vocab_size, hidden});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    DecoderLayer layer;
    layer.input_norm = get(p + "input_layernorm.weight", {hidden});
    layer.post_attention_norm = get(p + "post_attention_layernorm.weight", {hidden});
    layer.q_proj = linear(p + "self_attn.q_proj", q_out, hidden, c.qkv_bias);
    layer.k_proj = linear(p + "self_attn.k_proj", kv_out, hidden, c.qkv_bias);
    layer.v_proj = linear(p + "self_attn.v_proj", kv_out, hidden, c.qkv_bias);
    layer.o_proj = linear(p + "self_attn.o_proj", hidden, q_out, c.o_bias);
    layer.gate_proj = linear(p + "mlp.gate_proj", c.intermediate_size, hidden, c.mlp_bias);
    layer.up_proj = linear(p + "mlp.up_proj", c.intermediate_size, hidden, c.mlp_bias);
    layer.down_proj = linear(p + "mlp.down_proj", hidden, c.intermediate_size, c.mlp_bias);
    m.layers_.push_back(std::move(layer));
  }
  m.final_norm_ = get("model.norm.weight", {hidden});
  m.tied_ = !untied_lm_head;
  m.lm_head_ = m.tied_ ? std::make_shared<DenseLinear>(m.embed_) : linear("lm_head", c.vocab_size, hidden, false);
  m.inv_freq_ = rope_inv_freq(c.rope, c.head_dim);
  return m;
}

CausalLM CausalLM::load(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype) {
  ModelConfig config = ModelConfig::load(dir);
  io::Checkpoint ckpt = io::Checkpoint::open(dir);
  WeightLoader w(ckpt, dir, device, dtype);
  const bool untied = !config.tie_word_embeddings && ckpt.contains("lm_head.weight");
  if (!config.tie_word_embeddings && !untied)
    spdlog::warn("{}: no lm_head.weight; using the input embeddings (tied)", dir.string());
  CausalLM m = assemble(std::move(config), device, dtype,
                        [&](const std::string& name, const std::vector<int64_t>& shape) { return w.get(name, shape); },
                        untied);
  w.report_unused();
  return m;
}

CausalLM CausalLM::init_random(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype,
                               uint64_t seed) {
  ModelConfig config = ModelConfig::load(dir);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = config.initializer_range;
  const bool gemma = config.norm_unit_offset;
  const std::optional<int64_t> pad = config.pad_token_id;
  // Drawn in fp32 on the CPU (the same numbers on every device), then moved.
  auto make = [&](const std::string& name, const std::vector<int64_t>& shape) {
    at::Tensor t;
    if (name.ends_with("norm.weight")) {
      t = gemma ? at::zeros(shape, at::kFloat) : at::ones(shape, at::kFloat);
    } else if (name.ends_with(".bias")) {
      t = at::zeros(shape, at::kFloat);
    } else {
      t = at::empty(shape, at::kFloat);
      t.normal_(0.0, std, gen);
      if (name == "model.embed_tokens.weight" && pad && *pad >= 0 && *pad < shape[0]) t[*pad].zero_();
    }
    return t.to(device, dtype);
  };
  const bool untied = !config.tie_word_embeddings;
  return assemble(std::move(config), device, dtype, make, untied);
}

}  // namespace llmtune::model
