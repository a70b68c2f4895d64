// What GGUF export and import share (FORMATS.md §6.5): the architecture of a model_type, the
// HF ↔ GGUF tensor layouts (llama's q/k row permutation, Gemma's 1 + w norms, GPT-2's Conv1D),
// generated tensors (rope factors), the metadata keys and llama.cpp's tensor order. The
// per-tensor type policy lives in quant/gguf_policy.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "llmtune/io/gguf.h"
#include "llmtune/model/config.h"
#include "llmtune/model/family.h"
#include "llmtune/quant/gguf_policy.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines::gguf_detail {

// The family of `model_type` when it has a GGUF form (FamilyDesc::gguf.arch); ModelLoadError
// naming `source` and the exportable model types otherwise.
const model::FamilyDesc& gguf_family(const std::string& model_type, const std::string& source);

// A tensor in the HF layout → as GGUF stores it (q/k rows permuted for llama, each part of a fused
// projection on its own; norms as 1 + w for gemma), and back. `hf_name` names the tensor (a
// LoRA B matrix is named by its module + ".weight": its rows are permuted like the weight's).
at::Tensor to_gguf_layout(const model::FamilyDesc& f, const model::ModelConfig& c, const std::string& hf_name,
                          const at::Tensor& t);
at::Tensor from_gguf_layout(const model::FamilyDesc& f, const model::ModelConfig& c, const std::string& hf_name,
                            const at::Tensor& t);

// A linear weight the checkpoint stores (in, out) (GPT-2's Conv1D); GGUF holds it (out, in), as
// the converter transposes it.
bool is_conv1d_weight(const model::FamilyDesc& f, const std::string& hf_name);

// Tensors the converter generates rather than copies, by GGUF name: llama3's rope_freqs, Phi-3
// longrope's rope_factors_long / rope_factors_short (float32, 1-D). Empty for most models.
std::vector<std::pair<std::string, at::Tensor>> generated_tensors(const model::FamilyDesc& f, const model::ModelConfig& c);

// gguf_metadata.cpp: the general.* and <arch>.* keys in the converter's order and types for
// `c` (raw: its config.json), and back: config.json's fields from a GGUF's keys, as
// ModelConfig::from_json reads them (tensors consulted: rope factors, embedding rows).
void write_model_metadata(io::GgufWriter& w, const model::ModelConfig& c, const nlohmann::json& raw,
                          const model::FamilyDesc& family, const quant::FileType& ft, const std::string& name);
nlohmann::json config_from_metadata(const io::GgufFile& f, const model::FamilyDesc& family);

// A tensor's values as float32 (CPU) of PyTorch `shape`, dequantized when needed.
at::Tensor gguf_tensor_float(const io::GgufFile& f, const io::GgufTensorInfo& t, const std::vector<int64_t>& shape);

// GGUF stores floats as float32: 1e-5 comes back as 9.99999975e-06. The shortest decimal that
// rounds to the same float gives back the value config.json had.
double shortest(double v);

// t: (n_head·hd, ...) rows. permute: HF row k·hd/2 + j → GGUF row 2j + k within each head;
// unpermute is its inverse.
at::Tensor permute_qk(const at::Tensor& t, int64_t n_head);
at::Tensor unpermute_qk(const at::Tensor& t, int64_t n_head);

// (head_dim/2,) float32: the per-frequency divisors llama.cpp reads from rope_freqs.weight.
at::Tensor llama3_rope_factors(const model::RopeConfig& rope, int64_t head_dim);

// llama.cpp's tensor order (llama_model_loader's weight_name_comparer): tensors outside blocks
// first, then by block number, by name within each.
bool gguf_name_less(const std::string& a, const std::string& b);
int64_t block_of(const std::string& gguf_name);  // N of "blk.N.", else -1

// Writes <dir of gguf>/Modelfile for Ollama; returns its path. Logs a warning when the model's
// chat template is not one we can express as an Ollama template.
std::filesystem::path write_ollama_modelfile(const tokenizer::Tokenizer& tok, const std::filesystem::path& gguf_path);

}  // namespace llmtune::pipelines::gguf_detail
