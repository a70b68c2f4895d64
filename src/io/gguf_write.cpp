// The GGUF writer: metadata and tensor infos are collected (small), tensor data is streamed straight
// to an AtomicFile in declaration order with zero padding (FORMATS.md §6.1), so peak memory never
// holds tensor data and an unfinished file never appears at the target path.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "gguf_detail.h"
#include "llmtune/io/atomic_file.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using detail::fail;
using json = nlohmann::json;

const char* const kCallerBug = "a bug in llmtune; please report it";

// Appends little-endian encodings of GGUF values to `out`; with out == nullptr it only validates.
class Encoder {
 public:
  Encoder(const fs::path& path, std::string* out) : path_(path), out_(out) {}

  template <typename T>
  void put(T value) {
    if (out_) out_->append(reinterpret_cast<const char*>(&value), sizeof(T));
  }
  void put_string(std::string_view s) {
    put<uint64_t>(s.size());
    if (out_) out_->append(s);
  }

  // One value of `type` (not an array) from its JSON form; `where` names it in errors.
  void scalar(const std::string& where, GgufValueType type, const json& j) {
    if (detail::gguf_is_integer(type)) return integer(where, type, j);
    switch (type) {
      case GgufValueType::FLOAT32:
      case GgufValueType::FLOAT64: {
        if (!j.is_number()) bad(where, type, j);
        const double d = j.is_number_unsigned() ? static_cast<double>(j.get<uint64_t>())
                         : j.is_number_integer() ? static_cast<double>(j.get<int64_t>())
                                                 : j.get<double>();
        if (type == GgufValueType::FLOAT32) put<float>(static_cast<float>(d));
        else put<double>(d);
        return;
      }
      case GgufValueType::BOOL:
        if (!j.is_boolean()) bad(where, type, j);
        return put<uint8_t>(j.get<bool>() ? 1 : 0);
      case GgufValueType::STRING:
        if (!j.is_string()) bad(where, type, j);
        return put_string(j.get_ref<const std::string&>());
      default:
        break;
    }
    fail(path_, where + " has a value type id " + std::to_string(static_cast<uint32_t>(type)) + " that GGUF does not define",
         kCallerBug);
  }

  void value(const std::string& where, const GgufValue& v) {
    if (!detail::gguf_is_known(static_cast<uint32_t>(v.type)))
      fail(path_, where + " has a value type id " + std::to_string(static_cast<uint32_t>(v.type)) + " that GGUF does not define", kCallerBug);
    put<uint32_t>(static_cast<uint32_t>(v.type));
    if (v.type != GgufValueType::ARRAY) return scalar(where, v.type, v.value);
    // GgufValue keeps no element types below the first level, so nested arrays cannot be written faithfully.
    if (v.elem_type == GgufValueType::ARRAY)
      fail(path_, where + " is an array of arrays, which GgufWriter does not write", "flatten it into one array");
    if (!v.value.is_array()) bad(where, v.type, v.value);
    put<uint32_t>(static_cast<uint32_t>(v.elem_type));
    put<uint64_t>(v.value.size());
    for (const auto& e : v.value) scalar(where, v.elem_type, e);
  }

 private:
  void integer(const std::string& where, GgufValueType type, const json& j) {
    if (!j.is_number_integer()) bad(where, type, j);
    const auto [min, max] = detail::gguf_integer_range(type);
    const bool fits = j.is_number_unsigned() ? j.get<uint64_t>() <= max
                                             : j.get<int64_t>() >= min && (j.get<int64_t>() < 0 || static_cast<uint64_t>(j.get<int64_t>()) <= max);
    if (!fits) bad(where, type, j);
    const uint64_t bits = j.is_number_unsigned() ? j.get<uint64_t>() : static_cast<uint64_t>(j.get<int64_t>());
    switch (detail::gguf_min_value_bytes(type)) {
      case 1: return put<uint8_t>(static_cast<uint8_t>(bits));
      case 2: return put<uint16_t>(static_cast<uint16_t>(bits));
      case 4: return put<uint32_t>(static_cast<uint32_t>(bits));
      default: return put<uint64_t>(bits);
    }
  }

  [[noreturn]] void bad(const std::string& where, GgufValueType type, const json& j) {
    std::string shown = j.dump(-1, ' ', false, json::error_handler_t::replace);
    if (shown.size() > 80) shown = shown.substr(0, 77) + "...";
    fail(path_, where + ": " + shown + " is not a valid " + gguf_value_type_name(type) + " value",
         "pass a value of the declared type and range");
  }

  const fs::path& path_;
  std::string* out_;
};

void write_zeros(AtomicFile& file, uint64_t n) {
  static const char kZeros[4096] = {};
  while (n > 0) {
    const uint64_t chunk = std::min<uint64_t>(n, sizeof(kZeros));
    file.write(kZeros, chunk);
    n -= chunk;
  }
}

}  // namespace

GgufWriter::GgufWriter(fs::path path, uint32_t alignment) : path_(std::move(path)), alignment_(alignment) {
  if (!std::has_single_bit(alignment_))
    fail(path_, "GGUF alignment " + std::to_string(alignment_) + " is not a power of two", "use 32 (the default) or 64");
  if (alignment_ != detail::kGgufDefaultAlignment)
    metadata_.push_back({detail::kGgufAlignmentKey, {GgufValueType::UINT32, GgufValueType::UINT32, alignment_}});
  file_ = std::make_unique<AtomicFile>(path_);
}

GgufWriter::~GgufWriter() = default;  // an uncommitted AtomicFile removes its temporary file

void GgufWriter::add(std::string key, GgufValue value) {
  if (header_written_) fail(path_, "metadata key " + detail::quoted(key) + " added after the tensor data began", kCallerBug);
  const std::string where = "metadata key " + detail::quoted(key);
  if (key.empty()) fail(path_, "a metadata key is empty", kCallerBug);
  Encoder(path_, nullptr).value(where, value);
  if (key == detail::kGgufAlignmentKey) {
    if (value.type != GgufValueType::UINT32 || value.value != json(alignment_)) {
      fail(path_, where + " = " + value.value.dump() + " disagrees with the writer's alignment " + std::to_string(alignment_),
           "pass the alignment to GgufWriter's constructor instead");
    }
    if (alignment_ != detail::kGgufDefaultAlignment) return;  // the constructor added it
  }
  for (const auto& kv : metadata_)
    if (kv.key == key) fail(path_, "duplicate metadata key " + detail::quoted(key), kCallerBug);
  metadata_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::add_string(std::string key, std::string value) {
  add(std::move(key), {GgufValueType::STRING, GgufValueType::UINT32, json(std::move(value))});
}
void GgufWriter::add_u32(std::string key, uint32_t value) { add(std::move(key), {GgufValueType::UINT32, GgufValueType::UINT32, value}); }
void GgufWriter::add_i32(std::string key, int32_t value) { add(std::move(key), {GgufValueType::INT32, GgufValueType::UINT32, value}); }
void GgufWriter::add_u64(std::string key, uint64_t value) { add(std::move(key), {GgufValueType::UINT64, GgufValueType::UINT32, value}); }
void GgufWriter::add_f32(std::string key, float value) {
  add(std::move(key), {GgufValueType::FLOAT32, GgufValueType::UINT32, static_cast<double>(value)});
}
void GgufWriter::add_bool(std::string key, bool value) { add(std::move(key), {GgufValueType::BOOL, GgufValueType::UINT32, value}); }
void GgufWriter::add_string_array(std::string key, const std::vector<std::string>& values) {
  add(std::move(key), {GgufValueType::ARRAY, GgufValueType::STRING, json(values)});
}
void GgufWriter::add_f32_array(std::string key, const std::vector<float>& values) {
  json arr = json::array();
  arr.get_ref<json::array_t&>().reserve(values.size());
  for (float v : values) arr.push_back(static_cast<double>(v));
  add(std::move(key), {GgufValueType::ARRAY, GgufValueType::FLOAT32, std::move(arr)});
}
void GgufWriter::add_i32_array(std::string key, const std::vector<int32_t>& values) {
  add(std::move(key), {GgufValueType::ARRAY, GgufValueType::INT32, json(values)});
}

void GgufWriter::add_tensor_info(std::string name, std::vector<int64_t> ne, GgmlType type) {
  const std::string where = "tensor " + detail::quoted(name);
  if (header_written_) fail(path_, where + " declared after the tensor data began", kCallerBug);
  if (name.empty() || name.size() > detail::kGgufMaxNameBytes) {
    fail(path_, where + " has a name of " + std::to_string(name.size()) + " bytes (GGUF needs 1 to " +
                    std::to_string(detail::kGgufMaxNameBytes) + ")", "shorten the tensor name");
  }
  for (const auto& t : tensors_)
    if (t.name == name) fail(path_, "duplicate tensor name " + detail::quoted(name), kCallerBug);
  if (ne.empty() || ne.size() > detail::kGgufMaxDims)
    fail(path_, where + " has " + std::to_string(ne.size()) + " dimensions (GGUF needs 1 to 4)", kCallerBug);
  const GgmlTypeInfo& info = ggml_type_info(type);
  int64_t n_elements = 1;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] < 0) fail(path_, where + " has ne[" + std::to_string(i) + "] = " + std::to_string(ne[i]), kCallerBug);
    if (__builtin_mul_overflow(n_elements, ne[i], &n_elements))
      fail(path_, where + " has dimensions whose element count overflows", kCallerBug);
  }
  if (ne[0] % info.block_size != 0) {
    fail(path_, where + " of type " + info.name + " has ne[0] = " + std::to_string(ne[0]) +
                    ", not a multiple of the block size " + std::to_string(info.block_size),
         "keep such tensors in F16/F32, or pick a type whose blocks divide the row");
  }
  GgufTensorInfo t;
  t.name = std::move(name);
  t.ne = std::move(ne);
  t.type = type;
  t.n_bytes = ggml_nbytes(type, n_elements);
  if (!tensors_.empty()) {
    const GgufTensorInfo& prev = tensors_.back();
    uint64_t prev_end = 0;
    if (__builtin_add_overflow(prev.offset, prev.n_bytes, &prev_end) || !detail::gguf_pad(prev_end, alignment_, &t.offset))
      fail(path_, where + " starts past 2^64 bytes", kCallerBug);
  }
  tensors_.push_back(std::move(t));
}

void GgufWriter::write_header() {
  std::string header;
  Encoder out(path_, &header);
  out.put<uint32_t>(detail::kGgufMagic);
  out.put<uint32_t>(3);
  out.put<uint64_t>(tensors_.size());
  out.put<uint64_t>(metadata_.size());
  for (const auto& kv : metadata_) {
    out.put_string(kv.key);
    out.value("metadata key " + detail::quoted(kv.key), kv.value);
  }
  for (const auto& t : tensors_) {
    out.put_string(t.name);
    out.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) out.put<uint64_t>(static_cast<uint64_t>(d));
    out.put<uint32_t>(static_cast<uint32_t>(t.type));
    out.put<uint64_t>(t.offset);
  }
  uint64_t padded = 0;
  detail::gguf_pad(header.size(), alignment_, &padded);
  header.resize(padded, '\0');
  file_->write(header.data(), header.size());
  bytes_written_ = header.size();
  header_written_ = true;
}

void GgufWriter::write_tensor(const void* data, uint64_t n_bytes) {
  if (!file_) fail(path_, "write_tensor on a closed writer (committed, or an earlier write failed)", kCallerBug);
  if (next_tensor_ >= tensors_.size()) {
    fail(path_, "write_tensor called more often than tensors were declared (" + std::to_string(tensors_.size()) + ")",
         kCallerBug);
  }
  const GgufTensorInfo& t = tensors_[next_tensor_];
  if (n_bytes != t.n_bytes) {
    fail(path_, "tensor " + detail::quoted(t.name) + " (" + ggml_type_info(t.type).name + ") needs " + std::to_string(t.n_bytes) +
                    " bytes, got " + std::to_string(n_bytes) + " (tensors must be written in declaration order)", kCallerBug);
  }
  try {
    if (!header_written_) write_header();
    file_->write(data, n_bytes);
    uint64_t padded = 0;
    detail::gguf_pad(n_bytes, alignment_, &padded);
    write_zeros(*file_, padded - n_bytes);
    bytes_written_ += padded;
  } catch (...) {
    file_.reset();  // removes the temporary file now; later calls see a closed writer
    throw;
  }
  ++next_tensor_;
}

void GgufWriter::commit() {
  if (!file_) fail(path_, "commit on a closed writer (committed, or an earlier write failed)", kCallerBug);
  if (next_tensor_ != tensors_.size()) {
    fail(path_, "commit with " + std::to_string(tensors_.size() - next_tensor_) + " of " + std::to_string(tensors_.size()) +
                    " declared tensors unwritten, the first " + detail::quoted(tensors_[next_tensor_].name), kCallerBug);
  }
  try {
    if (!header_written_) write_header();
    file_->commit();
  } catch (...) {
    file_.reset();
    throw;
  }
  file_.reset();
}

}  // namespace llmtune::io
