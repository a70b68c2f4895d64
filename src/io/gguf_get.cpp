// GgufFile's typed metadata getters: one place that maps GGUF value types onto the C++ types callers
// want, with an error naming the file, the key and both types when they do not fit.
#include <limits>

#include "gguf_detail.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

using detail::fail;
using json = nlohmann::json;

const char* const kWrongType = "the file does not follow the GGUF conventions for this key; re-convert it";

[[noreturn]] void wrong_type(const std::filesystem::path& path, std::string_view key, const std::string& expected,
                             const GgufValue& v) {
  std::string actual = gguf_value_type_name(v.type);
  if (v.type == GgufValueType::ARRAY) actual += std::string(" of ") + gguf_value_type_name(v.elem_type);
  fail(path, "metadata key " + detail::quoted(key) + " is " + actual + ", expected " + expected, kWrongType);
}

// An integer value (stored as a JSON signed or unsigned number) as int64, or nullopt past its range.
std::optional<int64_t> as_int64(const json& j) {
  if (j.is_number_unsigned()) {
    const auto u = j.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  return j.get<int64_t>();
}

double as_double(const json& j) {
  if (j.is_number_unsigned()) return static_cast<double>(j.get<uint64_t>());
  if (j.is_number_integer()) return static_cast<double>(j.get<int64_t>());
  return j.get<double>();
}

}  // namespace

std::optional<std::string> GgufFile::get_string_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::STRING) wrong_type(path_, key, "STRING", *v);
  return v->value.get<std::string>();
}

std::optional<int64_t> GgufFile::get_int_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!detail::gguf_is_integer(v->type)) wrong_type(path_, key, "an integer", *v);
  auto out = as_int64(v->value);
  if (!out) fail(path_, "metadata key " + detail::quoted(key) + " = " + v->value.dump() + " does not fit int64", kWrongType);
  return out;
}

std::optional<double> GgufFile::get_float_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (!detail::gguf_is_float(v->type) && !detail::gguf_is_integer(v->type)) wrong_type(path_, key, "a number", *v);
  return as_double(v->value);
}

std::optional<bool> GgufFile::get_bool_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::BOOL) wrong_type(path_, key, "BOOL", *v);
  return v->value.get<bool>();
}

namespace {

[[noreturn]] void missing(const std::filesystem::path& path, std::string_view key) {
  fail(path, "metadata key " + detail::quoted(key) + " is missing",
       "the file was not converted for this model family, or by a converter that omits it");
}

template <typename T>
T required(const GgufFile& file, std::string_view key, std::optional<T> value) {
  if (!value) missing(file.path(), key);
  return std::move(*value);
}

const GgufValue& require(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.find(key);
  if (!v) missing(file.path(), key);
  return *v;
}

}  // namespace

std::string GgufFile::get_string(std::string_view key) const { return required(*this, key, get_string_opt(key)); }
int64_t GgufFile::get_int(std::string_view key) const { return required(*this, key, get_int_opt(key)); }
double GgufFile::get_float(std::string_view key) const { return required(*this, key, get_float_opt(key)); }

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufValueType::ARRAY || v.elem_type != GgufValueType::STRING) wrong_type(path_, key, "ARRAY of STRING", v);
  std::vector<std::string> out;
  out.reserve(v.value.size());
  for (const auto& e : v.value) out.push_back(e.get<std::string>());
  return out;
}

std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufValueType::ARRAY || (!detail::gguf_is_float(v.elem_type) && !detail::gguf_is_integer(v.elem_type)))
    wrong_type(path_, key, "ARRAY of numbers", v);
  std::vector<double> out;
  out.reserve(v.value.size());
  for (const auto& e : v.value) out.push_back(as_double(e));
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue& v = require(*this, key);
  if (v.type != GgufValueType::ARRAY || !detail::gguf_is_integer(v.elem_type)) wrong_type(path_, key, "ARRAY of integers", v);
  std::vector<int64_t> out;
  out.reserve(v.value.size());
  for (size_t i = 0; i < v.value.size(); ++i) {
    auto e = as_int64(v.value[i]);
    if (!e) {
      fail(path_, "metadata key " + detail::quoted(key) + " element " + std::to_string(i) + " = " + v.value[i].dump() +
                      " does not fit int64", kWrongType);
    }
    out.push_back(*e);
  }
  return out;
}

}  // namespace llmtune::io
