// GGUF block encoders and decoders (FORMATS.md §6.4): ggml's reference quantizers
// (quantize_row_*_ref in ggml-quants.c, which llama-quantize uses without an importance matrix)
// and dequantizers, on plain float rows. Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 blocks are bit-exact with ggml.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "llmtune/io/gguf.h"

namespace llmtune::quant {

using io::GgmlType;

bool can_quantize(GgmlType type);
bool can_dequantize(GgmlType type);

// src: n_rows × n_per_row floats, row-major → dst: n_rows × ggml_nbytes(type, n_per_row) bytes.
// n_per_row must be a multiple of the block size (QuantError otherwise). F32/F16/BF16 are
// converted as ggml does (BF16 round-to-nearest-even, NaN kept quiet). Parallel over rows.
void quantize_rows(GgmlType type, const float* src, uint8_t* dst, int64_t n_rows, int64_t n_per_row);
void dequantize_rows(GgmlType type, const uint8_t* src, float* dst, int64_t n_rows, int64_t n_per_row);

// x: any floating dtype, any device, ≥ 1-D; its last dimension is the row (GGUF ne[0]).
// Returns a CPU uint8 tensor (rows, row_bytes) holding the blocks.
at::Tensor quantize(const at::Tensor& x, GgmlType type);
// `data` holds blocks for a tensor of PyTorch `shape` (last dim = ne[0]) → float32 CPU tensor.
at::Tensor dequantize(const uint8_t* data, GgmlType type, const std::vector<int64_t>& shape);

}  // namespace llmtune::quant
