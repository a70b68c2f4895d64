// Internals shared by the GGUF reader and writer (src/io only): value-type facts and layout limits.
// The one-line error helper and quoting come from safetensors_detail.h (the same for every io format).
#pragma once

#include <cstdint>
#include <utility>

#include "llmtune/io/gguf.h"
#include "safetensors_detail.h"

namespace llmtune::io::detail {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGgufDefaultAlignment = 32;
constexpr uint64_t kGgufMaxNameBytes = 63;   // ggml GGML_MAX_NAME (64) counts the NUL
constexpr uint32_t kGgufMaxDims = 4;
constexpr const char* kGgufAlignmentKey = "general.alignment";

bool gguf_is_integer(GgufValueType t);
bool gguf_is_float(GgufValueType t);
// Ids 0..12 (FORMATS.md §6.1).
bool gguf_is_known(uint32_t id);
// Bytes one value of type `t` takes at least in a file (strings and arrays: their length fields).
uint64_t gguf_min_value_bytes(GgufValueType t);
// [min, max] of an integer type (the max as uint64 so that UINT64 fits).
std::pair<int64_t, uint64_t> gguf_integer_range(GgufValueType t);

// `x` rounded up to a multiple of `alignment` (a power of two); false when that overflows.
inline bool gguf_pad(uint64_t x, uint64_t alignment, uint64_t* out) {
  if (__builtin_add_overflow(x, alignment - 1, out)) return false;
  *out &= ~(alignment - 1);
  return true;
}

}  // namespace llmtune::io::detail
