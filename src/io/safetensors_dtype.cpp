// The safetensors dtype table (FORMATS.md §1.2) and its mapping to libtorch scalar types.
#include "llmtune/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <array>

#include "llmtune/util/error.h"
#include "safetensors_detail.h"

namespace llmtune::io {
namespace detail {
namespace {

using ST = c10::ScalarType;

// In the Rust enum order: the writer puts higher ranks (wider alignment) first.
constexpr std::array<DtypeRow, 22> kDtypes{{
    {"BOOL", 0, 8, ST::Bool},
    {"F4", 1, 4, ST::Undefined},
    {"F6_E2M3", 2, 6, ST::Undefined},
    {"F6_E3M2", 3, 6, ST::Undefined},
    {"U8", 4, 8, ST::Byte},
    {"I8", 5, 8, ST::Char},
    {"F8_E5M2", 6, 8, ST::Float8_e5m2},
    {"F8_E4M3", 7, 8, ST::Float8_e4m3fn},
    {"F8_E8M0", 8, 8, ST::Float8_e8m0fnu},
    {"F8_E4M3FNUZ", 9, 8, ST::Float8_e4m3fnuz},
    {"F8_E5M2FNUZ", 10, 8, ST::Float8_e5m2fnuz},
    {"I16", 11, 16, ST::Short},
    {"U16", 12, 16, ST::UInt16},
    {"F16", 13, 16, ST::Half},
    {"BF16", 14, 16, ST::BFloat16},
    {"I32", 15, 32, ST::Int},
    {"U32", 16, 32, ST::UInt32},
    {"F32", 17, 32, ST::Float},
    {"C64", 18, 64, ST::ComplexFloat},
    {"F64", 19, 64, ST::Double},
    {"I64", 20, 64, ST::Long},
    {"U64", 21, 64, ST::UInt64},
}};

}  // namespace

const DtypeRow* find_dtype(std::string_view name) {
  for (const auto& row : kDtypes)
    if (row.name == name) return &row;
  return nullptr;
}

const DtypeRow* find_dtype(c10::ScalarType t) {
  if (t == ST::Undefined) return nullptr;
  for (const auto& row : kDtypes)
    if (row.torch == t) return &row;
  return nullptr;
}

std::string supported_dtypes() {
  std::string out;
  for (const auto& row : kDtypes) {
    if (row.torch == ST::Undefined) continue;
    if (!out.empty()) out += ", ";
    out += row.name;
  }
  return out;
}

std::string quoted(std::string_view s) {
  // Replace, not throw, on invalid UTF-8: this runs while reporting another error.
  return nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void fail(const std::filesystem::path& path, const std::string& what, const std::string& remedy) {
  std::string message = path.string() + ": " + what + " (" + remedy + ")";
  std::string one_line;
  one_line.reserve(message.size());
  for (char c : message) {
    if (c == '\n') one_line += "\\n";
    else if (c == '\r') one_line += "\\r";
    else one_line += c;
  }
  throw IoError(one_line);
}

}  // namespace detail

std::string dtype_to_safetensors(at::ScalarType dtype) {
  const auto* row = detail::find_dtype(dtype);
  if (!row) {
    throw IoError(std::string("dtype ") + c10::toString(dtype) + " cannot be stored in safetensors (supported: " +
                  detail::supported_dtypes() + "; convert the tensor with .to(...) first)");
  }
  return std::string(row->name);
}

at::ScalarType dtype_from_safetensors(const std::string& dtype) {
  const auto* row = detail::find_dtype(dtype);
  if (!row || row->torch == c10::ScalarType::Undefined) {
    throw IoError("unsupported safetensors dtype " + detail::quoted(dtype) + " (supported: " +
                  detail::supported_dtypes() + ")");
  }
  return row->torch;
}

}  // namespace llmtune::io
