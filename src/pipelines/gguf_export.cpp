// HF checkpoint → GGUF as convert_hf_to_gguf.py writes it, with llama-quantize's per-tensor types
// for quantized file types (quantizing straight from the source values, i.e. what llama-quantize
// gives on an F32 conversion). Tensors are read, converted and written one at a time; the metadata
// keys are gguf_metadata.cpp's.
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

// The bytes of `t` (CPU, float) as ggml type `type`, rows along the last dimension.
at::Tensor encode(const at::Tensor& t, GgmlType type) {
  if (type == GgmlType::F32) return t.to(at::kFloat).contiguous();
  if (type == GgmlType::F16) return t.to(at::kHalf).contiguous();  // round-to-nearest-even, as numpy
  if (!quant::can_quantize(type))
    throw QuantError(std::string("GGUF export: no encoder for ggml type ") + io::ggml_type_info(type).name);
  return quant::quantize(t.to(at::kFloat).contiguous(), type);
}

struct Entry {
  std::string gguf_name, hf_name;  // hf_name "" for generated tensors (rope factors)
  std::string source_name;         // hf_name as the checkpoint spells it (GPT-2's may lack "transformer.")
  std::vector<int64_t> shape;      // PyTorch order, as GGUF holds it
  GgmlType type = GgmlType::F32;
  at::Tensor generated;
};

// What llama.cpp does with the model's sliding windows: nothing for architectures without one
// (the converter drops it), nothing yet for Phi-3 (its loader turns the window off).
void warn_sliding_window(const model::ModelConfig& c, const model::GgufDesc& arch) {
  int64_t window = 0;
  for (int64_t v : c.sliding_window_per_layer) window = std::max(window, v);
  if (window == 0 || window >= c.max_position_embeddings) return;
  if (arch.keys == model::GgufKeys::Gemma2 || arch.keys == model::GgufKeys::Gemma3) return;
  if (arch.keys == model::GgufKeys::Phi3)
    spdlog::warn("GGUF export: {}.attention.sliding_window is {}, which llama.cpp's phi3 currently ignores: past {} tokens it "
                 "attends to the whole context where transformers attends to the last {} only", arch.arch, window, window, window);
  else
    spdlog::warn("GGUF export: the {} architecture has no sliding window; past {} tokens llama.cpp attends to the whole "
                 "context where transformers attends to the last {} only", arch.arch, window, window);
}

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
  warn_sliding_window(c, arch);

  const std::set<std::string> present(hf_names.begin(), hf_names.end());
  // The checkpoint's spelling of a canonical name: as is, or without the family's optional prefix.
  auto stored_name = [&](const std::string& name) {
    const std::string& prefix = family.optional_prefix;
    if (present.count(name) || prefix.empty() || !name.starts_with(prefix)) return name;
    const std::string bare = name.substr(prefix.size());
    return present.count(bare) ? bare : name;
  };
  // Gemma's converter drops lm_head; a tied model has no output tensor (llama.cpp reuses token_embd).
  const std::string lm_head = stored_name(family.lm_head + ".weight");
  const bool untied = !arch.drop_lm_head && !c.tie_word_embeddings && present.count(lm_head);
  if (!arch.drop_lm_head && !c.tie_word_embeddings && !untied)
    spdlog::warn("{}: no {}; the GGUF reuses the input embeddings (tied)", model_dir.string(), lm_head);

  FileType ft;
  if (options.type == "auto" || options.type.empty()) {
    at::ScalarType first = at::kFloat;
    for (const auto& n : hf_names) {
      if (model::hf_to_gguf_name(family, n).empty() && model::hf_to_gguf_name(family, family.optional_prefix + n).empty()) continue;
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
    const std::string stored = stored_name(name);
    if (!present.count(stored))
      throw ModelLoadError(model_dir.string() + ": tensor '" + name + "' is missing from the checkpoint");
    entries.push_back({model::hf_to_gguf_name(family, name), name, stored, shape});
    used.insert(stored);
  }
  for (auto& [gguf_name, t] : generated_tensors(family, c)) {
    Entry e{gguf_name, "", "", t.sizes().vec()};
    e.generated = t;
    entries.push_back(std::move(e));
  }
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
      t = e.generated;
    } else {
      t = source(e.source_name);
      // GPT-2's Conv1D weights are stored (in, out); the converter writes them transposed.
      if (is_conv1d_weight(family, e.hf_name) && t.dim() == 2) t = t.t().contiguous();
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
