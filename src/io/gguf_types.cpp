// The GGUF type tables (FORMATS.md §6.1, §6.3): ggml tensor types with their block geometry, and the
// metadata value types. Shared by the reader and the writer.
#include <array>
#include <cctype>
#include <limits>
#include <string>

#include "gguf_detail.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

using T = GgmlType;

// Q8_1 is 36 bytes as ggml's block_q8_1 struct (gguf-py's table says 40; never stored in model files).
constexpr std::array<GgmlTypeInfo, 20> kGgmlTypes{{
    {T::F32, "F32", 1, 4},       {T::F16, "F16", 1, 2},       {T::Q4_0, "Q4_0", 32, 18},
    {T::Q4_1, "Q4_1", 32, 20},   {T::Q5_0, "Q5_0", 32, 22},   {T::Q5_1, "Q5_1", 32, 24},
    {T::Q8_0, "Q8_0", 32, 34},   {T::Q8_1, "Q8_1", 32, 36},   {T::Q2_K, "Q2_K", 256, 84},
    {T::Q3_K, "Q3_K", 256, 110}, {T::Q4_K, "Q4_K", 256, 144}, {T::Q5_K, "Q5_K", 256, 176},
    {T::Q6_K, "Q6_K", 256, 210}, {T::Q8_K, "Q8_K", 256, 292}, {T::I8, "I8", 1, 1},
    {T::I16, "I16", 1, 2},       {T::I32, "I32", 1, 4},       {T::I64, "I64", 1, 8},
    {T::F64, "F64", 1, 8},       {T::BF16, "BF16", 1, 2},
}};

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

}  // namespace

const GgmlTypeInfo* ggml_type_info(uint32_t id) {
  for (const auto& row : kGgmlTypes)
    if (static_cast<uint32_t>(row.type) == id) return &row;
  return nullptr;
}

const GgmlTypeInfo& ggml_type_info(GgmlType type) {
  const GgmlTypeInfo* row = ggml_type_info(static_cast<uint32_t>(type));
  if (!row) throw IoError("ggml type id " + std::to_string(static_cast<uint32_t>(type)) + " is not in llmtune's table (a bug in llmtune; please report it)");
  return *row;
}

std::optional<GgmlType> ggml_type_from_name(std::string_view name) {
  for (const auto& row : kGgmlTypes)
    if (iequals(row.name, name)) return row.type;
  return std::nullopt;
}

uint64_t ggml_nbytes(GgmlType type, int64_t n_elements) {
  const GgmlTypeInfo& info = ggml_type_info(type);
  if (n_elements < 0 || n_elements % info.block_size != 0) {
    throw IoError(std::to_string(n_elements) + " elements cannot be stored as ggml type " + info.name +
                  " (the count must be a non-negative multiple of its block size " + std::to_string(info.block_size) + ")");
  }
  uint64_t n_bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(n_elements / info.block_size), static_cast<uint64_t>(info.type_size), &n_bytes))
    throw IoError(std::to_string(n_elements) + " elements of ggml type " + info.name + " overflow a 64-bit byte count");
  return n_bytes;
}

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::UINT8: return "UINT8";
    case GgufValueType::INT8: return "INT8";
    case GgufValueType::UINT16: return "UINT16";
    case GgufValueType::INT16: return "INT16";
    case GgufValueType::UINT32: return "UINT32";
    case GgufValueType::INT32: return "INT32";
    case GgufValueType::FLOAT32: return "FLOAT32";
    case GgufValueType::BOOL: return "BOOL";
    case GgufValueType::STRING: return "STRING";
    case GgufValueType::ARRAY: return "ARRAY";
    case GgufValueType::UINT64: return "UINT64";
    case GgufValueType::INT64: return "INT64";
    case GgufValueType::FLOAT64: return "FLOAT64";
  }
  return "UNKNOWN";
}

std::vector<int64_t> GgufTensorInfo::shape() const { return {ne.rbegin(), ne.rend()}; }

int64_t GgufTensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // the reader and the writer have checked that this cannot overflow
  return n;
}

namespace detail {

bool gguf_is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16: case GgufValueType::INT16:
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::UINT64: case GgufValueType::INT64:
      return true;
    default:
      return false;
  }
}

bool gguf_is_float(GgufValueType t) { return t == GgufValueType::FLOAT32 || t == GgufValueType::FLOAT64; }

bool gguf_is_known(uint32_t id) { return id <= static_cast<uint32_t>(GgufValueType::FLOAT64); }

uint64_t gguf_min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
    case GgufValueType::STRING: return 8;   // the length
    case GgufValueType::ARRAY: return 12;   // element type + count
  }
  return 1;
}

std::pair<int64_t, uint64_t> gguf_integer_range(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: return {0, std::numeric_limits<uint8_t>::max()};
    case GgufValueType::INT8: return {std::numeric_limits<int8_t>::min(), std::numeric_limits<int8_t>::max()};
    case GgufValueType::UINT16: return {0, std::numeric_limits<uint16_t>::max()};
    case GgufValueType::INT16: return {std::numeric_limits<int16_t>::min(), std::numeric_limits<int16_t>::max()};
    case GgufValueType::UINT32: return {0, std::numeric_limits<uint32_t>::max()};
    case GgufValueType::INT32: return {std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()};
    case GgufValueType::UINT64: return {0, std::numeric_limits<uint64_t>::max()};
    default: return {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()};
  }
}

}  // namespace detail
}  // namespace llmtune::io
