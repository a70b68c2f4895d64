// GGUF v3 (FORMATS.md §6): a memory-mapped, strictly validated reader and a one-pass streaming
// writer. Only the container lives here; block encoders/decoders are in quant/gguf_quants.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llmtune::io {

class AtomicFile;

// ggml tensor types, ids as stored in GGUF files (FORMATS.md §6.3).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
};

struct GgmlTypeInfo {
  GgmlType type;
  const char* name;    // "F32", "Q4_K", ... as ggml spells them
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
};

// nullptr for ids outside the table above (IQ*, removed types, MXFP4, ...).
const GgmlTypeInfo* ggml_type_info(uint32_t id);
const GgmlTypeInfo& ggml_type_info(GgmlType type);
// "q4_k", "Q4_K", "bf16": case-insensitive; nullopt for an unknown name.
std::optional<GgmlType> ggml_type_from_name(std::string_view name);
// Bytes of `n_elements` values of `type`; IoError when n_elements is not a multiple of the block size.
uint64_t ggml_nbytes(GgmlType type, int64_t n_elements);

enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_value_type_name(GgufValueType type);

// One metadata value: a number, bool or string as the JSON scalar; an array as a JSON array whose
// elements are all of `elem_type` (nested arrays: elem_type ARRAY, inner element types not kept).
struct GgufValue {
  GgufValueType type = GgufValueType::UINT32;
  GgufValueType elem_type = GgufValueType::UINT32;  // arrays only
  nlohmann::json value;
};

struct GgufKV {
  std::string key;
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order: ne[0] is the contiguous dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;      // relative to the data section
  uint64_t n_bytes = 0;
  std::vector<int64_t> shape() const;  // PyTorch order (ne reversed)
  int64_t n_elements() const;
};

// A GGUF v2/v3 little-endian file, memory-mapped. Every malformed file (bad magic, big-endian,
// truncation, unknown value or tensor type, duplicate keys or tensor names, more than 4 dims,
// sizes that overflow, offsets unaligned, overlapping or past the end) is rejected at open() with
// an IoError naming the file and the problem.
class GgufFile : public std::enable_shared_from_this<GgufFile> {
 public:
  static std::shared_ptr<GgufFile> open(const std::filesystem::path& path);
  ~GgufFile();

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }

  const std::vector<GgufKV>& metadata() const { return metadata_; }  // file order
  const GgufValue* find(std::string_view key) const;                  // nullptr when absent

  // Typed getters. An absent key: nullopt from *_opt, IoError "<file>: metadata key K is missing"
  // from the others. A wrong type: IoError naming the key, the expected and the actual type.
  // Integer getters accept every integer type (range-checked); float getters also accept integers.
  std::string get_string(std::string_view key) const;
  std::optional<std::string> get_string_opt(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  std::optional<int64_t> get_int_opt(std::string_view key) const;
  double get_float(std::string_view key) const;
  std::optional<double> get_float_opt(std::string_view key) const;
  std::optional<bool> get_bool_opt(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }  // file order
  const GgufTensorInfo* find_tensor(std::string_view name) const;           // nullptr when absent
  // The tensor's n_bytes bytes inside the mapping.
  const uint8_t* data(const GgufTensorInfo& t) const;
  // The same bytes as a CPU uint8 tensor of shape (n_bytes,) that keeps the mapping alive.
  at::Tensor raw(const GgufTensorInfo& t) const;

 private:
  GgufFile() = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_start_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::vector<GgufKV> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

// Writes a GGUF v3 file in one pass: metadata and tensor infos are declared first (add_*), then
// the tensor data is streamed in declaration order (write_tensor), then commit(). The header goes
// out with the first write_tensor (or commit). Written through AtomicFile: destroyed without
// commit(), it leaves nothing behind; a write error (disk full) is an IoError naming the file.
// general.alignment is written only when alignment != 32.
class GgufWriter {
 public:
  explicit GgufWriter(std::filesystem::path path, uint32_t alignment = 32);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata in insertion order; a duplicate key or a call after the header went out is an IoError.
  void add(std::string key, GgufValue value);
  void add_string(std::string key, std::string value);
  void add_u32(std::string key, uint32_t value);
  void add_i32(std::string key, int32_t value);
  void add_u64(std::string key, uint64_t value);
  void add_f32(std::string key, float value);
  void add_bool(std::string key, bool value);
  void add_string_array(std::string key, const std::vector<std::string>& values);
  void add_f32_array(std::string key, const std::vector<float>& values);
  void add_i32_array(std::string key, const std::vector<int32_t>& values);

  // Declares the next tensor: name unique and < 64 bytes, 1..4 dims, ne[0] a multiple of the
  // type's block size. IoError otherwise, naming the tensor.
  void add_tensor_info(std::string name, std::vector<int64_t> ne, GgmlType type);
  // The data of the next declared tensor; n_bytes must equal its size.
  void write_tensor(const void* data, uint64_t n_bytes);
  // Every declared tensor must have been written. Renames the file into place.
  void commit();

  const std::filesystem::path& path() const { return path_; }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  void write_header();

  std::filesystem::path path_;
  uint32_t alignment_;
  std::unique_ptr<AtomicFile> file_;
  std::vector<GgufKV> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  size_t next_tensor_ = 0;
  bool header_written_ = false;
  uint64_t bytes_written_ = 0;
};

}  // namespace llmtune::io
