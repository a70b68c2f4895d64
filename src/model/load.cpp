// Loading a Hugging Face model directory into a CausalLM: config, then each expected tensor by
// its transformers name, checked for shape, moved to the device and dtype (no copy when both
// already match: CPU tensors then stay views of the memory-mapped file).
#include <spdlog/spdlog.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/model/rope.h"
#include "llmtune/util/error.h"

namespace llmtune::model {
namespace {

class WeightLoader {
 public:
  WeightLoader(const io::WeightFiles& ckpt, const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype,
               std::string optional_prefix)
      : ckpt_(ckpt), dir_(dir), device_(device), dtype_(dtype), prefix_(std::move(optional_prefix)) {}

  at::Tensor get(const std::string& asked, std::vector<int64_t> shape) {
    // Some checkpoints drop the base model's prefix (GPT-2's own files: "h.0.attn.c_attn.weight").
    const std::string name = ckpt_.contains(asked) || prefix_.empty() || !asked.starts_with(prefix_) ||
                                     !ckpt_.contains(asked.substr(prefix_.size()))
                                 ? asked : asked.substr(prefix_.size());
    if (!ckpt_.contains(name))
      throw ModelLoadError(dir_.string() + ": tensor '" + name + "' is missing from the checkpoint (is config.json from the same model?)");
    at::Tensor t = ckpt_.tensor(name);
    if (shape == kStoredTensor) {  // a quantized format's packed tensors: it checks and moves them
      used_.insert(name);
      return t;
    }
    if (!at::isFloatingType(t.scalar_type())) {  // packed 4-bit or int8 codes, not a dense weight
      throw ModelLoadError(dir_.string() + ": tensor '" + name + "' is stored quantized (" + c10::toString(t.scalar_type()) +
                           " " + c10::str(t.sizes()) + "); load the directory through its quantization_config");
    }
    if (t.sizes() != at::IntArrayRef(shape)) {
      throw ModelLoadError(dir_.string() + ": tensor '" + name + "' has shape " + c10::str(t.sizes()) + " but config.json implies " +
                           c10::str(at::IntArrayRef(shape)));
    }
    used_.insert(name);
    read_.push_back(name);
    return t.to(device_, dtype_);
  }

  // Builds one linear and releases the file pages of what it read but does not hold (a weight
  // quantized while it loads, or one copied to another device or dtype): a mapped page, once
  // read, stays resident until the mapping goes, so without this the peak would be the file's
  // size, not the model's. Pages a tensor still views are kept (they would only be read again).
  LinearPtr build(const LinearFactory& linear, const LinearRequest& request, const TensorSource& get) {
    read_.clear();
    LinearPtr built = linear(request, get);
    const std::vector<at::Tensor> held = built->tensors();
    for (const auto& name : read_) {
      const at::Tensor mapped = ckpt_.tensor(name);
      const auto* begin = static_cast<const char*>(mapped.data_ptr());
      const auto* end = begin + mapped.nbytes();
      const bool viewed = std::any_of(held.begin(), held.end(), [&](const at::Tensor& h) {
        if (!h.defined() || !h.device().is_cpu() || h.nbytes() == 0) return false;
        const auto* p = static_cast<const char*>(h.data_ptr());
        return p < end && p + h.nbytes() > begin;
      });
      if (!viewed) ckpt_.release(name);
    }
    read_.clear();
    return built;
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
  const io::WeightFiles& ckpt_;
  std::filesystem::path dir_;
  c10::Device device_;
  at::ScalarType dtype_;
  std::string prefix_;
  std::set<std::string> used_;
  std::vector<std::string> read_;  // dense tensors read since the current linear began
};

}  // namespace

CausalLM CausalLM::assemble(ModelConfig config, c10::Device device, at::ScalarType dtype, const TensorSource& get,
                            bool untied_lm_head, const LinearFactory& linear) {
  CausalLM m;
  m.config_ = std::move(config);
  m.device_ = device;
  m.dtype_ = dtype;
  const ModelConfig& c = m.config_;
  const FamilyDesc& f = family_for(c.model_type, "model");
  m.family_ = &f;
  for (size_t k = 0; k < f.norms.size(); ++k) m.norm_index_[static_cast<int>(f.norms[k].role)] = static_cast<int>(k);
  const int64_t hidden = c.hidden_size;
  // Tensors are requested in checkpoint order (random init draws in this order).
  m.embed_ = get(f.embed + ".weight", {c.vocab_size, hidden});
  if (!f.pos_embed.empty()) m.pos_embed_ = get(f.pos_embed + ".weight", {c.max_position_embeddings, hidden});
  // GPT-2's Conv1D stores linear weights (in, out): asked for in that shape, held transposed.
  const TensorSource linear_source = !f.conv1d ? get : TensorSource([&](const std::string& name, const std::vector<int64_t>& shape) {
    if (shape == kStoredTensor || shape.size() != 2 || !name.ends_with(".weight")) return get(name, shape);
    return get(name, {shape[1], shape[0]}).t().contiguous();
  });
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = f.layers_prefix + std::to_string(i) + ".";
    DecoderLayer layer;
    for (const auto& n : f.norms) {
      layer.norms.push_back(get(p + n.name + ".weight", {norm_size(c, n.role)}));
      if (f.layer_norm) layer.norm_biases.push_back(get(p + n.name + ".bias", {norm_size(c, n.role)}));
    }
    for (const auto& d : f.linears) {
      LinearShape s = linear_shape(f, c, i, d);
      layer.linears.push_back(linear({s.path, s.out_features, s.in_features, s.bias}, linear_source));
    }
    m.layers_.push_back(std::move(layer));
  }
  m.final_norm_ = get(f.final_norm + ".weight", {hidden});
  if (f.layer_norm) m.final_norm_bias_ = get(f.final_norm + ".bias", {hidden});
  m.tied_ = !untied_lm_head;
  m.lm_head_ = m.tied_ ? std::make_shared<DenseLinear>(m.embed_)
                       : linear({f.lm_head, c.vocab_size, hidden, false}, get);
  if (!c.learned_positions) {  // once, not per forward (dynamic and longrope tables are per forward)
    RopeTables t = rope_tables(c.rope, c.head_dim, c.max_position_embeddings, 0);
    m.inv_freq_ = t.inv_freq.to(device);
    m.rope_scaling_ = t.attention_scaling;
    if (c.rope_local) {
      RopeTables l = rope_tables(*c.rope_local, c.head_dim, c.max_position_embeddings, 0);
      m.inv_freq_local_ = l.inv_freq.to(device);
      m.rope_scaling_local_ = l.attention_scaling;
    }
  }
  if (c.scale_embeddings) {
    // Gemma: sqrt(hidden) rounded to the activation dtype, as transformers multiplies by a tensor of it.
    m.embed_scale_ = at::scalar_tensor(std::sqrt(static_cast<double>(c.hidden_size)), at::kFloat).to(dtype).item<double>();
  }
  return m;
}

CausalLM CausalLM::load(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype,
                        const LinearFactory& linear) {
  ModelConfig config = ModelConfig::load(dir);
  io::WeightFiles ckpt = io::WeightFiles::open(dir);
  const FamilyDesc& family = family_for(config.model_type, dir.string());
  WeightLoader w(ckpt, dir, device, dtype, family.optional_prefix);
  const std::string lm_head = family.lm_head + ".weight";
  const bool untied = !config.tie_word_embeddings && ckpt.contains(lm_head);
  if (!config.tie_word_embeddings && !untied && !family.lm_head_optional)
    spdlog::warn("{}: no {}; using the input embeddings (tied)", dir.string(), lm_head);
  const TensorSource get = [&](const std::string& name, const std::vector<int64_t>& shape) { return w.get(name, shape); };
  CausalLM m = assemble(std::move(config), device, dtype, get, untied,
                        [&](const LinearRequest& r, const TensorSource& source) { return w.build(linear, r, source); });
  w.report_unused();
  return m;
}

CausalLM CausalLM::init_random(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype,
                               uint64_t seed, const LinearFactory& linear) {
  ModelConfig config = ModelConfig::load(dir);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = config.initializer_range;
  const bool gemma = config.norm_unit_offset;
  const std::optional<int64_t> pad = config.pad_token_id;
  const FamilyDesc& family = family_for(config.model_type, dir.string());
  const std::string embed = family.embed + ".weight";
  std::set<std::string> norms{family.final_norm + ".weight"};
  for (int64_t i = 0; i < config.n_layers; ++i)
    for (const auto& n : family.norms) norms.insert(family.layers_prefix + std::to_string(i) + "." + n.name + ".weight");
  // Drawn in fp32 on the CPU (the same numbers on every device), then moved.
  auto make = [&](const std::string& name, const std::vector<int64_t>& shape) {
    at::Tensor t;
    if (norms.count(name)) {
      t = gemma ? at::zeros(shape, at::kFloat) : at::ones(shape, at::kFloat);
    } else if (name.ends_with(".bias")) {
      t = at::zeros(shape, at::kFloat);
    } else {
      t = at::empty(shape, at::kFloat);
      t.normal_(0.0, std, gen);
      if (name == embed && pad && *pad >= 0 && *pad < shape[0]) t[*pad].zero_();
    }
    return t.to(device, dtype);
  };
  const bool untied = !config.tie_word_embeddings;
  return assemble(std::move(config), device, dtype, make, untied, linear);
}

}  // namespace llmtune::model
