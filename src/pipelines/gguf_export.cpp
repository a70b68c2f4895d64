// HF checkpoint → GGUF as convert_hf_to_gguf.py writes it, with llama-quantize's per-tensor types
// for quantized file types (quantizing straight from the source values, i.e. what llama-quantize
// gives on an F32 conversion). Tensors are read, converted and written one at a time.
#include <spdlog/spdlog.h>

#include <ATen/ops/empty.h>

#include <algorithm>
#include <chrono>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "gguf_arch.h"
#include "llmtune/io/gguf.h"
#include "llmtune/io/read_file.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/quant/gguf_policy.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::pipelines {
namespace {

using namespace gguf_detail;
using io::GgmlType;
using quant::FileType;

// The general.* and <arch>.* keys, in the converter's order (FORMATS.md §6.5).
void write_model_metadata(io::GgufWriter& w, const model::ModelConfig& c, const nlohmann::json& raw, const model::FamilyDesc& family,
                          const FileType& ft, const std::string& name) {
  const model::GgufDesc& a = family.gguf;
  const std::string p = a.arch + ".";
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  w.add_string("general.architecture", a.arch);
  w.add_string("general.type", "model");
  w.add_string("general.name", name);
  const bool explicit_head_dim = raw.contains("head_dim") && !raw["head_dim"].is_null();
  if (a.keys == model::GgufKeys::Gemma) {
    w.add_u32(p + "context_length", u32(c.max_position_embeddings));
    w.add_u32(p + "embedding_length", u32(c.hidden_size));
    w.add_u32(p + "block_count", u32(c.n_layers));
    w.add_u32(p + "feed_forward_length", u32(c.intermediate_size));
    w.add_u32(p + "attention.head_count", u32(c.n_heads));
    w.add_u32(p + "attention.head_count_kv", u32(c.n_heads_kv));
    w.add_f32(p + "attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
    w.add_u32(p + "attention.key_length", u32(c.head_dim));
    w.add_u32(p + "attention.value_length", u32(c.head_dim));
    w.add_f32(p + "rope.freq_base", static_cast<float>(c.rope.theta));  // llama.cpp's default is 10000
    w.add_u32("general.file_type", ft.id);
  } else {
    w.add_u32(p + "block_count", u32(c.n_layers));
    w.add_u32(p + "context_length", u32(c.max_position_embeddings));
    w.add_u32(p + "embedding_length", u32(c.hidden_size));
    w.add_u32(p + "feed_forward_length", u32(c.intermediate_size));
    w.add_u32(p + "attention.head_count", u32(c.n_heads));
    w.add_u32(p + "attention.head_count_kv", u32(c.n_heads_kv));
    if (c.rope.type == "linear") {
      w.add_string(p + "rope.scaling.type", "linear");
      w.add_f32(p + "rope.scaling.factor", static_cast<float>(c.rope.factor));
    }
    w.add_f32(p + "rope.freq_base", static_cast<float>(c.rope.theta));
    w.add_f32(p + "attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
    if (explicit_head_dim) {
      w.add_u32(p + "attention.key_length", u32(c.head_dim));
      w.add_u32(p + "attention.value_length", u32(c.head_dim));
    }
    w.add_u32("general.file_type", ft.id);
    if (a.keys == model::GgufKeys::Llama) {
      w.add_u32(p + "vocab_size", u32(c.vocab_size));
      w.add_u32(p + "rope.dimension_count", u32(c.head_dim));
    }
  }
  w.add_u32("general.quantization_version", 2);
}

// The bytes of `t` (CPU, float) as ggml type `type`, rows along the last dimension.
at::Tensor encode(const at::Tensor& t, GgmlType type) {
  if (type == GgmlType::F32) return t.to(at::kFloat).contiguous();
  if (type == GgmlType::F16) return t.to(at::kHalf).contiguous();  // round-to-nearest-even, as numpy
  if (!quant::can_quantize(type))
    throw QuantError(std::string("GGUF export: no encoder for ggml type ") + io::ggml_type_info(type).name);
  return quant::quantize(t.to(at::kFloat).contiguous(), type);
}

struct Entry {
  std::string gguf_name, hf_name;  // hf_name "" for generated tensors (rope_freqs)
  std::vector<int64_t> shape;      // PyTorch order
  GgmlType type = GgmlType::F32;
};

}  // namespace

GgufExportReport export_gguf(const std::filesystem::path& model_dir, const std::vector<std::string>& hf_names,
                             const HfTensorSource& source, const std::filesystem::path& out,
                             const GgufExportOptions& options) {
  const auto start = SteadyClock::now();
  const std::string src = (model_dir / "config.json").string();
  const nlohmann::json raw = io::read_json_file<ModelLoadError, nlohmann::json>(model_dir / "config.json", "config.json");
  const model::ModelConfig c = model::ModelConfig::from_json(raw, src);
  const model::FamilyDesc& family = gguf_family(c.model_type, src);
  const model::GgufDesc& arch = family.gguf;
  if (c.rope.type == "llama3" && arch.arch != "llama")
    throw ModelLoadError(src + ": llama3 rope scaling can be exported to GGUF only for the llama architecture");
  // llama.cpp's llama/qwen2/gemma architectures have no sliding window (its converter drops it too).
  const int64_t window = c.sliding_window_per_layer.empty()
                             ? 0 : *std::max_element(c.sliding_window_per_layer.begin(), c.sliding_window_per_layer.end());
  if (window > 0 && window < c.max_position_embeddings)
    spdlog::warn("GGUF export: the {} architecture has no sliding window; past {} tokens llama.cpp attends to the whole "
                 "context where transformers attends to the last {} only", arch.arch, window, window);

  const std::set<std::string> present(hf_names.begin(), hf_names.end());
  // Gemma's converter drops lm_head; a tied model has no output tensor (llama.cpp reuses token_embd).
  const std::string lm_head = family.lm_head + ".weight";
  const bool untied = !arch.drop_lm_head && !c.tie_word_embeddings && present.count(lm_head);
  if (!arch.drop_lm_head && !c.tie_word_embeddings && !untied)
    spdlog::warn("{}: no {}; the GGUF reuses the input embeddings (tied)", model_dir.string(), lm_head);

  FileType ft;
  if (options.type == "auto" || options.type.empty()) {
    at::ScalarType first = at::kFloat;
    for (const auto& n : hf_names) {
      if (model::hf_to_gguf_name(family, n).empty()) continue;
      at::Tensor t = source(n);
      if (t.dim() >= 2) {
        first = t.scalar_type();
        break;
      }
    }
    ft = quant::file_type_for_source(first);
  } else {
    ft = quant::parse_file_type(options.type);
  }

  std::vector<Entry> entries;
  std::set<std::string> used;
  for (const auto& [name, shape] : model::checkpoint_tensors(family, c, untied)) {
    if (!present.count(name))
      throw ModelLoadError(model_dir.string() + ": tensor '" + name + "' is missing from the checkpoint");
    entries.push_back({model::hf_to_gguf_name(family, name), name, shape});
    used.insert(name);
  }
  if (c.rope.type == "llama3") entries.push_back({"rope_freqs.weight", "", {c.head_dim / 2}});
  size_t unused = 0;
  for (const auto& n : hf_names) unused += !used.count(n) && !n.ends_with("rotary_emb.inv_freq");
  if (unused) spdlog::warn("GGUF export: {} checkpoint tensor(s) have no GGUF counterpart and are skipped", unused);

  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return gguf_name_less(a.gguf_name, b.gguf_name); });
  const bool tied = !untied;
  int64_t n_fallback = 0;
  for (auto& e : entries) {
    std::vector<int64_t> ne(e.shape.rbegin(), e.shape.rend());
    e.type = quant::choose_tensor_type(ft, e.gguf_name, ne, block_of(e.gguf_name), c.n_layers, tied, &n_fallback);
  }
  if (n_fallback)
    spdlog::warn("GGUF export: {} tensor(s) have a first dimension the {} types cannot hold; llama.cpp's fallback types used",
                 n_fallback, ft.name);

  const std::string name = !options.name.empty()                  ? options.name
                           : !model_dir.filename().empty()         ? model_dir.filename().string()
                                                                   : model_dir.parent_path().filename().string();
  tokenizer::GgufVocab vocab = tokenizer::gguf_vocab_from_model_dir(model_dir, c.vocab_size);

  if (out.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out.parent_path(), ec);
    if (ec) throw IoError(out.parent_path().string() + ": cannot create the output directory: " + ec.message());
  }
  io::GgufWriter writer(out);
  write_model_metadata(writer, c, raw, family, ft, name);
  tokenizer::write_gguf_vocab(writer, vocab);
  GgufExportReport report;
  for (const auto& e : entries) {
    writer.add_tensor_info(e.gguf_name, std::vector<int64_t>(e.shape.rbegin(), e.shape.rend()), e.type);
    ++report.tensors_per_type[io::ggml_type_info(e.type).name];
  }

  for (const auto& e : entries) {
    at::Tensor t;
    if (e.hf_name.empty()) {
      t = llama3_rope_factors(c.rope, c.head_dim);
    } else {
      t = source(e.hf_name);
      if (t.sizes() != at::IntArrayRef(e.shape))
        throw ModelLoadError(model_dir.string() + ": tensor '" + e.hf_name + "' has shape " + c10::str(t.sizes()) +
                             " but config.json implies " + c10::str(at::IntArrayRef(e.shape)));
      t = t.cpu();
      // As the converter: dtypes other than f16/f32 go to f32 first; edits happen in that dtype.
      if (t.scalar_type() != at::kHalf && t.scalar_type() != at::kFloat) t = t.to(at::kFloat);
      t = to_gguf_layout(family, c, e.hf_name, t);
    }
    at::Tensor bytes = encode(t, e.type);
    const uint64_t n = bytes.numel() * bytes.element_size();
    if (n != io::ggml_nbytes(e.type, t.numel()))
      throw QuantError("GGUF export: tensor " + e.gguf_name + " encoded to " + std::to_string(n) + " bytes, expected " +
                       std::to_string(io::ggml_nbytes(e.type, t.numel())));
    writer.write_tensor(bytes.data_ptr(), n);
  }
  writer.commit();

  report.path = out;
  report.bytes = std::filesystem::file_size(out);
  report.file_type = ft.name;
  if (options.ollama) report.modelfile = write_ollama_modelfile(*tokenizer::load_tokenizer(model_dir), out);
  report.seconds = seconds_since(start);
  std::string counts;
  for (const auto& [type, count] : report.tensors_per_type) counts += (counts.empty() ? "" : ", ") + fmt::format("{} {}", count, type);
  spdlog::info("GGUF: {} ({}, {} tensors: {}; {:.1f} MiB) in {:.1f} s", out.string(), ft.name, entries.size(), counts,
               report.bytes / 1048576.0, report.seconds);
  return report;
}

}  // namespace llmtune::pipelines
