// A GGUF model file (ours or llama.cpp's: llama, qwen2, gemma) → CausalLM + Tokenizer: the config
// rebuilt from the metadata as a config.json would say it, weights dequantized and brought back to
// the HF layout (q/k rows un-permuted for llama, Gemma norms stored as 1 + w).
#include <spdlog/spdlog.h>

#include <ATen/ops/from_blob.h>

#include <charconv>
#include <nlohmann/json.hpp>
#include <set>

#include "gguf_arch.h"
#include "llmtune/io/gguf.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace {

using namespace gguf_detail;
using io::GgmlType;

// GGUF stores these as float32: 1e-5 comes back as 9.99999975e-06. The shortest decimal that
// rounds to the same float gives back the value config.json had.
double shortest(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), static_cast<float>(v));
  return std::strtod(std::string(buf, r.ptr).c_str(), nullptr);
}

// float32 CPU tensor of PyTorch `shape` from the tensor's bytes.
at::Tensor to_float(const io::GgufFile& f, const io::GgufTensorInfo& t, const std::vector<int64_t>& shape) {
  const void* data = f.data(t);
  auto view = [&](at::ScalarType st) { return at::from_blob(const_cast<void*>(data), shape, at::TensorOptions().dtype(st)); };
  switch (t.type) {
    case GgmlType::F32: return view(at::kFloat).clone();
    case GgmlType::F16: return view(at::kHalf).to(at::kFloat);
    case GgmlType::BF16: return view(at::kBFloat16).to(at::kFloat);
    default:
      if (!quant::can_dequantize(t.type))
        throw QuantError(f.path().string() + ": tensor " + t.name + " has type " + io::ggml_type_info(t.type).name +
                         ", which llmtune cannot dequantize");
      return quant::dequantize(static_cast<const uint8_t*>(data), t.type, shape);
  }
}

// config.json's fields from the <arch>.* keys (FORMATS.md §6.5).
nlohmann::json config_from_metadata(const io::GgufFile& f, const model::FamilyDesc& family) {
  const std::string& arch = family.gguf.arch;
  const std::string p = arch + ".";
  nlohmann::json j;
  j["model_type"] = family.model_type;
  j["hidden_size"] = f.get_int(p + "embedding_length");
  j["num_hidden_layers"] = f.get_int(p + "block_count");
  j["intermediate_size"] = f.get_int(p + "feed_forward_length");
  const int64_t heads = f.get_int(p + "attention.head_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = f.get_int_opt(p + "attention.head_count_kv").value_or(heads);
  if (auto kl = f.get_int_opt(p + "attention.key_length")) j["head_dim"] = *kl;
  else if (auto rd = f.get_int_opt(p + "rope.dimension_count")) j["head_dim"] = *rd;
  j["max_position_embeddings"] = f.get_int(p + "context_length");
  j["rms_norm_eps"] = shortest(f.get_float(p + "attention.layer_norm_rms_epsilon"));
  j["rope_theta"] = shortest(f.get_float_opt(p + "rope.freq_base").value_or(10000.0));
  if (auto st = f.get_string_opt(p + "rope.scaling.type"); st && *st != "none") {
    if (*st != "linear")
      throw ModelLoadError(f.path().string() + ": rope scaling '" + *st + "' is not supported (none, linear)");
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", shortest(f.get_float(p + "rope.scaling.factor"))}};
  }
  if (auto v = f.get_int_opt(p + "vocab_size")) j["vocab_size"] = *v;
  else if (const auto* t = f.find_tensor("token_embd.weight"); t && t->ne.size() == 2) j["vocab_size"] = t->ne[1];
  else throw ModelLoadError(f.path().string() + ": tensor 'token_embd.weight' is missing");
  j["tie_word_embeddings"] = f.find_tensor("output.weight") == nullptr;
  j["attention_bias"] = f.find_tensor("blk.0.attn_q.bias") != nullptr;
  j["mlp_bias"] = f.find_tensor("blk.0.ffn_gate.bias") != nullptr;
  if (family.gguf.keys == model::GgufKeys::Gemma) j["hidden_activation"] = "gelu_pytorch_tanh";
  return j;
}

}  // namespace

GgufModel load_gguf_model(const std::filesystem::path& path, c10::Device device, at::ScalarType dtype) {
  auto file = io::GgufFile::open(path);
  const std::string src = path.string();
  const std::string arch = file->get_string("general.architecture");
  if (file->get_string_opt("general.type").value_or("model") == "adapter")
    throw ModelLoadError(src + ": this GGUF is a LoRA adapter, not a model");
  const model::FamilyDesc* family = model::family_for_gguf_arch(arch);
  if (!family) {
    std::string names;
    for (const auto& a : model::supported_gguf_archs()) names += (names.empty() ? "" : ", ") + a;
    throw ModelLoadError(src + ": GGUF architecture '" + arch + "' is not supported (" + names + ")");
  }
  model::ModelConfig c = model::ModelConfig::from_json(config_from_metadata(*file, *family), src);
  tokenizer::GgufVocab vocab = tokenizer::read_gguf_vocab(*file);
  if (vocab.bos_id) c.bos_token_id = *vocab.bos_id;
  if (vocab.eos_id) c.eos_token_ids = {*vocab.eos_id};
  if (vocab.pad_id) c.pad_token_id = *vocab.pad_id;
  c.qkv_bias = file->find_tensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = file->find_tensor("blk.0.attn_output.bias") != nullptr;
  if (const auto* rf = file->find_tensor("rope_freqs.weight")) {
    if (rf->n_elements() != c.head_dim / 2)
      throw ModelLoadError(src + ": rope_freqs.weight has " + std::to_string(rf->n_elements()) + " values, head_dim " +
                           std::to_string(c.head_dim) + " needs " + std::to_string(c.head_dim / 2));
    at::Tensor f = to_float(*file, *rf, {rf->n_elements()});
    c.rope.freq_factors.assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
  }
  const bool untied = !c.tie_word_embeddings;

  std::set<std::string> used;
  auto get = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const std::string gname = model::hf_to_gguf_name(*family, name);
    const io::GgufTensorInfo* t = file->find_tensor(gname);
    if (!t) throw ModelLoadError(src + ": tensor '" + gname + "' is missing (the metadata implies it)");
    if (t->shape() != shape)
      throw ModelLoadError(src + ": tensor '" + gname + "' has shape " + c10::str(at::IntArrayRef(t->shape())) +
                           " but the metadata implies " + c10::str(at::IntArrayRef(shape)));
    used.insert(gname);
    at::Tensor w = to_float(*file, *t, shape);
    return from_gguf_layout(*family, c, name, w).to(device, dtype);
  };
  GgufModel out;
  out.model = std::make_unique<model::CausalLM>(model::CausalLM::assemble(c, device, dtype, get, untied));
  size_t unused = 0;
  for (const auto& t : file->tensors()) unused += !used.count(t.name) && t.name != "rope_freqs.weight";
  if (unused) spdlog::warn("{}: {} tensor(s) in the GGUF are not used by the model", src, unused);
  out.tokenizer = tokenizer::tokenizer_from_gguf_vocab(vocab, src);
  spdlog::info("GGUF model {}: {} ({} layers, hidden {}, vocab {})", src, arch, c.n_layers, c.hidden_size, c.vocab_size);
  return out;
}

}  // namespace llmtune::pipelines
