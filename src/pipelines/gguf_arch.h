// What GGUF export and import share (FORMATS.md §6.5): the architecture of a model_type, the
// HF ↔ GGUF tensor names, llama's q/k row permutation, llama3 rope factors, and llama.cpp's choice
// of a ggml type per tensor for a file type (llama-quantize's llama_tensor_get_type).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "llmtune/io/gguf.h"
#include "llmtune/model/config.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines::gguf_detail {

struct ArchInfo {
  std::string arch;          // general.architecture: llama | qwen2 | gemma
  bool permute_qk = false;   // llama: q/k rows interleaved for llama.cpp's NORM rope
  bool norm_plus_one = false;  // gemma: GGUF stores 1 + w for every *norm.weight
};
// llama and mistral → llama; qwen2; gemma. ModelLoadError naming `source` otherwise.
ArchInfo arch_for_model_type(const std::string& model_type, const std::string& source);

// "model.layers.3.self_attn.q_proj.weight" → "blk.3.attn_q.weight"; "" for a name with no GGUF
// counterpart. gguf_to_hf_name is the inverse ("" likewise).
std::string hf_to_gguf_name(const std::string& hf_name);
std::string gguf_to_hf_name(const std::string& gguf_name);
bool is_q_or_k(const std::string& hf_name, bool* is_k = nullptr);

// t: (n_head·hd, ...) rows. permute: HF row k·hd/2 + j → GGUF row 2j + k within each head;
// unpermute is its inverse.
at::Tensor permute_qk(const at::Tensor& t, int64_t n_head);
at::Tensor unpermute_qk(const at::Tensor& t, int64_t n_head);

// (head_dim/2,) float32: the per-frequency divisors llama.cpp reads from rope_freqs.weight.
at::Tensor llama3_rope_factors(const model::RopeConfig& rope, int64_t head_dim);

// Every tensor a model of `c` has, by transformers name and PyTorch shape, in assemble()'s order.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_hf_tensors(const model::ModelConfig& c,
                                                                              bool with_lm_head);

// A llama.cpp file type (llama_ftype) as llama-quantize names it.
struct FileType {
  std::string name;      // "Q4_K_M", "F16", ...
  uint32_t id = 0;       // general.file_type
  io::GgmlType base{};   // llama_ftype_get_default_type
};
// Case-insensitive: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k_s q4_k_m q5_k_s q5_k_m q6_k, and
// q4_k / q5_k for q4_k_m / q5_k_m (llama-quantize's aliases). QuantError for anything else.
FileType parse_file_type(const std::string& name);
// The converter's guess for "auto": BF16 for a bfloat16 source, else F16.
FileType file_type_for_source(at::ScalarType first_matrix_dtype);

// The type llama.cpp gives tensor `gguf_name` (ne in GGUF order) in a file of type `ft`:
// 1-D and *_norm tensors F32; F32/F16/BF16 files: every matrix of that type; quantized files:
// llama-quantize's rules (output / tied token_embd → Q6_K, attn_v / ffn_down use_more_bits
// layers → Q6_K in *_M mixes, ...) then its fallbacks when ne[0] is not a multiple of the block.
// `layer` is N of blk.N (-1 otherwise); `tied`: the file has no output.weight. Fallbacks are
// counted in *n_fallback.
io::GgmlType choose_tensor_type(const FileType& ft, const std::string& gguf_name, const std::vector<int64_t>& ne,
                                int64_t layer, int64_t n_layers, bool tied, int64_t* n_fallback);

// llama.cpp's tensor order (llama_model_loader's weight_name_comparer): tensors outside blocks
// first, then by block number, by name within each.
bool gguf_name_less(const std::string& a, const std::string& b);
int64_t block_of(const std::string& gguf_name);  // N of "blk.N.", else -1

// Writes <dir of gguf>/Modelfile for Ollama; returns its path. Logs a warning when the model's
// chat template is not one we can express as an Ollama template.
std::filesystem::path write_ollama_modelfile(const tokenizer::Tokenizer& tok, const std::filesystem::path& gguf_path);

}  // namespace llmtune::pipelines::gguf_detail
