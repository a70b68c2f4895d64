// A GGUF model file (ours or llama.cpp's: llama, qwen2, qwen3, gemma, gemma2, gemma3, phi3, gpt2)
// → CausalLM + Tokenizer: the config rebuilt from the metadata as a config.json would say it
// (gguf_metadata.cpp), weights dequantized and brought back to the HF layout (q/k rows
// un-permuted for llama, Gemma norms stored as 1 + w, GPT-2's Conv1D weights (in, out)).
#include <spdlog/spdlog.h>

#include <ATen/ops/from_blob.h>

#include <nlohmann/json.hpp>
#include <set>

#include "gguf_arch.h"
#include "llmtune/io/gguf.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

namespace gguf_detail {

at::Tensor gguf_tensor_float(const io::GgufFile& f, const io::GgufTensorInfo& t, const std::vector<int64_t>& shape) {
  const void* data = f.data(t);
  auto view = [&](at::ScalarType st) { return at::from_blob(const_cast<void*>(data), shape, at::TensorOptions().dtype(st)); };
  switch (t.type) {
    case io::GgmlType::F32: return view(at::kFloat).clone();
    case io::GgmlType::F16: return view(at::kHalf).to(at::kFloat);
    case io::GgmlType::BF16: return view(at::kBFloat16).to(at::kFloat);
    default:
      if (!quant::can_dequantize(t.type))
        throw QuantError(f.path().string() + ": tensor " + t.name + " has type " + io::ggml_type_info(t.type).name +
                         ", which llmtune cannot dequantize");
      return quant::dequantize(static_cast<const uint8_t*>(data), t.type, shape);
  }
}

}  // namespace gguf_detail

namespace {

using namespace gguf_detail;

// Whether blk.0 has a bias on the linear that holds projection `p` (for GPT-2: attn_qkv, ...).
bool has_bias(const io::GgufFile& f, const model::FamilyDesc& family, model::Proj p) {
  for (const auto& l : family.linears)
    for (auto part : l.parts)
      if (part == p) return f.find_tensor("blk.0." + l.gguf + ".bias") != nullptr;
  return false;
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
    throw ModelLoadError(src + ": GGUF architecture '" + arch + "' is not supported (supported: " + names + ")");
  }
  model::ModelConfig c = model::ModelConfig::from_json(config_from_metadata(*file, *family), src);
  tokenizer::GgufVocab vocab = tokenizer::read_gguf_vocab(*file);
  if (vocab.bos_id) c.bos_token_id = *vocab.bos_id;
  if (vocab.eos_id) c.eos_token_ids = {*vocab.eos_id};
  if (vocab.pad_id) c.pad_token_id = *vocab.pad_id;
  c.qkv_bias = has_bias(*file, *family, model::Proj::Q);
  c.o_bias = has_bias(*file, *family, model::Proj::O);
  c.mlp_bias = has_bias(*file, *family, model::Proj::Down);
  if (const auto* rf = file->find_tensor("rope_freqs.weight")) {
    if (rf->n_elements() != c.head_dim / 2)
      throw ModelLoadError(src + ": rope_freqs.weight has " + std::to_string(rf->n_elements()) + " values, head_dim " +
                           std::to_string(c.head_dim) + " needs " + std::to_string(c.head_dim / 2));
    at::Tensor f = gguf_tensor_float(*file, *rf, {rf->n_elements()});
    c.rope.freq_factors.assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
  }
  const bool untied = !c.tie_word_embeddings;

  std::set<std::string> used;
  auto get = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const std::string gname = model::hf_to_gguf_name(*family, name);
    const io::GgufTensorInfo* t = file->find_tensor(gname);
    if (!t) throw ModelLoadError(src + ": tensor '" + gname + "' is missing (the metadata implies it)");
    // GPT-2's Conv1D weights are asked for as stored in its checkpoints, (in, out); GGUF holds (out, in).
    const bool conv1d = is_conv1d_weight(*family, name) && shape.size() == 2;
    const std::vector<int64_t> stored = conv1d ? std::vector<int64_t>{shape[1], shape[0]} : shape;
    if (t->shape() != stored)
      throw ModelLoadError(src + ": tensor '" + gname + "' has shape " + c10::str(at::IntArrayRef(t->shape())) +
                           " but the metadata implies " + c10::str(at::IntArrayRef(stored)));
    used.insert(gname);
    at::Tensor w = from_gguf_layout(*family, c, name, gguf_tensor_float(*file, *t, stored));
    if (conv1d) w = w.t().contiguous();
    return w.to(device, dtype);
  };
  GgufModel out;
  out.model = std::make_unique<model::CausalLM>(model::CausalLM::assemble(c, device, dtype, get, untied));
  size_t unused = 0;
  for (const auto& t : file->tensors())
    unused += !used.count(t.name) && t.name != "rope_freqs.weight" && t.name != "rope_factors_long.weight" &&
              t.name != "rope_factors_short.weight";
  if (unused) spdlog::warn("{}: {} tensor(s) in the GGUF are not used by the model", src, unused);
  out.tokenizer = tokenizer::tokenizer_from_gguf_vocab(vocab, src);
  spdlog::info("GGUF model {}: {} ({} layers, hidden {}, vocab {})", src, arch, c.n_layers, c.hidden_size, c.vocab_size);
  return out;
}

}  // namespace llmtune::pipelines
