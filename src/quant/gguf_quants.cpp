// The codec table and the row/tensor entry points of quant/gguf_quants.h: checks, then the
// per-row kernels of gguf_quants_legacy.cpp and gguf_quants_k.cpp in parallel over rows.
#include "llmtune/quant/gguf_quants.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <string>

#include "gguf_quants_rows.h"
#include "llmtune/util/error.h"

namespace llmtune::quant {
namespace {

using QuantizeRow = void (*)(const float*, uint8_t*, int64_t);
using DequantizeRow = void (*)(const uint8_t*, float*, int64_t);

// Our own copy of the block geometry (FORMATS.md §6.3) so the codecs do not depend on io/gguf.cpp.
struct Codec {
  GgmlType type;
  const char* name;
  int64_t block_size;
  int64_t type_size;
  QuantizeRow quantize;  // nullptr: decode only
  DequantizeRow dequantize;
};

constexpr Codec kCodecs[] = {
    {GgmlType::F32, "F32", 1, 4, rows::quantize_f32, rows::dequantize_f32},
    {GgmlType::F16, "F16", 1, 2, rows::quantize_f16, rows::dequantize_f16},
    {GgmlType::BF16, "BF16", 1, 2, rows::quantize_bf16, rows::dequantize_bf16},
    {GgmlType::Q4_0, "Q4_0", 32, 18, rows::quantize_q4_0, rows::dequantize_q4_0},
    {GgmlType::Q4_1, "Q4_1", 32, 20, rows::quantize_q4_1, rows::dequantize_q4_1},
    {GgmlType::Q5_0, "Q5_0", 32, 22, rows::quantize_q5_0, rows::dequantize_q5_0},
    {GgmlType::Q5_1, "Q5_1", 32, 24, rows::quantize_q5_1, rows::dequantize_q5_1},
    {GgmlType::Q8_0, "Q8_0", 32, 34, rows::quantize_q8_0, rows::dequantize_q8_0},
    {GgmlType::Q2_K, "Q2_K", 256, 84, rows::quantize_q2_k, rows::dequantize_q2_k},
    {GgmlType::Q3_K, "Q3_K", 256, 110, rows::quantize_q3_k, rows::dequantize_q3_k},
    {GgmlType::Q4_K, "Q4_K", 256, 144, rows::quantize_q4_k, rows::dequantize_q4_k},
    {GgmlType::Q5_K, "Q5_K", 256, 176, rows::quantize_q5_k, rows::dequantize_q5_k},
    {GgmlType::Q6_K, "Q6_K", 256, 210, rows::quantize_q6_k, rows::dequantize_q6_k},
};

const Codec* find_codec(GgmlType type) {
  for (const auto& c : kCodecs)
    if (c.type == type) return &c;
  return nullptr;
}

std::string type_label(GgmlType type) {
  const Codec* c = find_codec(type);
  return c ? std::string(c->name) : "ggml type " + std::to_string(static_cast<uint32_t>(type));
}

// The codec for `type`, and a check that rows of n_per_row elements split into whole blocks.
const Codec& checked_codec(GgmlType type, int64_t n_rows, int64_t n_per_row, bool quantizing) {
  const Codec* c = find_codec(type);
  if (c == nullptr || (quantizing && c->quantize == nullptr))
    throw QuantError(std::string(quantizing ? "cannot quantize to " : "cannot dequantize ") + type_label(type) +
                     ": supported are F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K");
  if (n_rows < 0 || n_per_row < 0)
    throw QuantError("gguf quant: negative shape (" + std::to_string(n_rows) + " rows of " + std::to_string(n_per_row) + ")");
  if (n_per_row % c->block_size != 0)
    throw QuantError(std::string(c->name) + " needs rows whose length is a multiple of " + std::to_string(c->block_size) +
                     " (its block size); got rows of " + std::to_string(n_per_row) + " elements");
  return *c;
}

// Rows per task: enough work (~64k elements) that scheduling stays negligible.
int64_t grain_rows(int64_t n_per_row) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, n_per_row)); }

}  // namespace

bool can_quantize(GgmlType type) {
  const Codec* c = find_codec(type);
  return c != nullptr && c->quantize != nullptr;
}

bool can_dequantize(GgmlType type) { return find_codec(type) != nullptr; }

void quantize_rows(GgmlType type, const float* src, uint8_t* dst, int64_t n_rows, int64_t n_per_row) {
  const Codec& c = checked_codec(type, n_rows, n_per_row, true);
  if (n_rows == 0 || n_per_row == 0) return;
  const int64_t row_bytes = n_per_row / c.block_size * c.type_size;
  at::parallel_for(0, n_rows, grain_rows(n_per_row), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) c.quantize(src + r * n_per_row, dst + r * row_bytes, n_per_row);
  });
}

void dequantize_rows(GgmlType type, const uint8_t* src, float* dst, int64_t n_rows, int64_t n_per_row) {
  const Codec& c = checked_codec(type, n_rows, n_per_row, false);
  if (n_rows == 0 || n_per_row == 0) return;
  const int64_t row_bytes = n_per_row / c.block_size * c.type_size;
  at::parallel_for(0, n_rows, grain_rows(n_per_row), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) c.dequantize(src + r * row_bytes, dst + r * n_per_row, n_per_row);
  });
}

at::Tensor quantize(const at::Tensor& x, GgmlType type) {
  if (!x.defined() || x.dim() < 1 || !at::isFloatingType(x.scalar_type()))
    throw QuantError("quantize to " + type_label(type) + ": expected a floating-point tensor with at least one dimension");
  const int64_t n_per_row = x.size(-1);
  const int64_t n_rows = n_per_row == 0 ? 0 : x.numel() / n_per_row;
  const Codec& c = checked_codec(type, n_rows, n_per_row, true);
  const at::Tensor src = x.to(at::kCPU, at::kFloat).contiguous();
  at::Tensor out = at::empty({n_rows, n_per_row / c.block_size * c.type_size}, at::TensorOptions().dtype(at::kByte));
  quantize_rows(type, src.const_data_ptr<float>(), out.mutable_data_ptr<uint8_t>(), n_rows, n_per_row);
  return out;
}

at::Tensor dequantize(const uint8_t* data, GgmlType type, const std::vector<int64_t>& shape) {
  if (shape.empty()) throw QuantError("dequantize " + type_label(type) + ": the shape needs at least one dimension");
  int64_t numel = 1;
  for (int64_t s : shape) {
    if (s < 0) throw QuantError("dequantize " + type_label(type) + ": negative dimension in the shape");
    numel *= s;
  }
  const int64_t n_per_row = shape.back();
  const int64_t n_rows = n_per_row == 0 ? 0 : numel / n_per_row;
  checked_codec(type, n_rows, n_per_row, false);
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  dequantize_rows(type, data, out.mutable_data_ptr<float>(), n_rows, n_per_row);
  return out;
}

}  // namespace llmtune::quant
