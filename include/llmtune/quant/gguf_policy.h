// llama.cpp's per-tensor type policy for a GGUF file type (llama-quantize's llama_tensor_get_type
// in src/llama-quant.cpp): the file types it names, and which ggml type each tensor gets.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

#include "llmtune/io/gguf.h"

namespace llmtune::quant {

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

// llama-quantize's use_more_bits(i_layer, n_layers): the layers *_M mixes give more bits.
bool use_more_bits(int64_t layer, int64_t n_layers);

// The type llama.cpp gives tensor `gguf_name` (ne in GGUF order) in a file of type `ft`:
// 1-D and *_norm tensors and position_embd F32; F32/F16/BF16 files: every matrix of that type;
// quantized files: llama-quantize's rules (output / tied token_embd → Q6_K, attn_v (or a fused
// attn_qkv) / ffn_down use_more_bits
// layers → Q6_K in *_M mixes, ...) then its fallbacks when ne[0] is not a multiple of the block.
// `layer` is N of blk.N (-1 otherwise); `tied`: the file has no output.weight. Fallbacks are
// counted in *n_fallback.
io::GgmlType choose_tensor_type(const FileType& ft, const std::string& gguf_name, const std::vector<int64_t>& ne,
                                int64_t layer, int64_t n_layers, bool tied, int64_t* n_fallback);

}  // namespace llmtune::quant
