// The GGUF reader: maps the file and validates every header field against FORMATS.md §6 before
// anything is trusted (every file is hostile: counts and lengths are checked against the bytes left
// before anything is allocated), then hands out tensor data as views of the mapping.
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "gguf_detail.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using detail::fail;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "GGUF files are read as little-endian; big-endian hosts need byte swaps");

const char* const kCorrupt = "the file is corrupt or was not written by a GGUF writer; re-convert or re-download it";
const char* const kTruncated = "the file looks truncated; re-download or re-convert it";
// Arrays of arrays of ...: the Python writer nests on request, real files never go past one level.
constexpr int kMaxArrayDepth = 8;

// Reads little-endian values from the mapping; running past the end is an error that says what
// was being read (`context`, set by the caller: a key or a tensor).
struct Cursor {
  const fs::path& path;
  const uint8_t* base;
  uint64_t size;
  uint64_t pos = 0;
  std::string context = "the header";

  uint64_t remaining() const { return size - pos; }

  void need(uint64_t n) const {
    if (n > remaining()) {
      fail(path, "the file ends inside " + context + " (needs " + std::to_string(n) + " bytes at offset " +
                     std::to_string(pos) + ", " + std::to_string(remaining()) + " left)", kTruncated);
    }
  }

  template <typename T>
  T read() {
    need(sizeof(T));
    T value;
    std::memcpy(&value, base + pos, sizeof(T));
    pos += sizeof(T);
    return value;
  }

  std::string read_string() {
    const uint64_t length = read<uint64_t>();
    if (length > remaining()) {
      fail(path, context + " has a string of " + std::to_string(length) + " bytes at offset " + std::to_string(pos - 8) +
                     ", longer than the " + std::to_string(remaining()) + " bytes left in the file", kTruncated);
    }
    std::string out(reinterpret_cast<const char*>(base + pos), length);
    pos += length;
    return out;
  }
};

json read_scalar(Cursor& in, GgufValueType type) {
  switch (type) {
    case GgufValueType::UINT8: return in.read<uint8_t>();
    case GgufValueType::INT8: return in.read<int8_t>();
    case GgufValueType::UINT16: return in.read<uint16_t>();
    case GgufValueType::INT16: return in.read<int16_t>();
    case GgufValueType::UINT32: return in.read<uint32_t>();
    case GgufValueType::INT32: return in.read<int32_t>();
    case GgufValueType::UINT64: return in.read<uint64_t>();
    case GgufValueType::INT64: return in.read<int64_t>();
    case GgufValueType::FLOAT32: return static_cast<double>(in.read<float>());
    case GgufValueType::FLOAT64: return in.read<double>();
    case GgufValueType::BOOL: {
      const uint8_t b = in.read<uint8_t>();
      if (b > 1) fail(in.path, in.context + " has a BOOL byte " + std::to_string(b) + " (must be 0 or 1)", kCorrupt);
      return b == 1;
    }
    case GgufValueType::STRING: return in.read_string();
    case GgufValueType::ARRAY: break;
  }
  fail(in.path, in.context + ": an array reached read_scalar (a bug in llmtune; please report it)", kCorrupt);
}

GgufValueType read_value_type(Cursor& in, const char* what) {
  const uint32_t id = in.read<uint32_t>();
  if (!detail::gguf_is_known(id))
    fail(in.path, in.context + " has unknown " + what + " " + std::to_string(id) + " (known: 0..12)", kCorrupt);
  return static_cast<GgufValueType>(id);
}

// An array after its ARRAY type id: element type, count, elements.
json read_array(Cursor& in, GgufValueType* elem_type_out, int depth) {
  const GgufValueType elem_type = read_value_type(in, "array element type");
  const uint64_t count = in.read<uint64_t>();
  // Every element takes at least this many bytes, so a lying count fails here, before any allocation.
  if (count > in.remaining() / detail::gguf_min_value_bytes(elem_type)) {
    fail(in.path, in.context + " claims " + std::to_string(count) + " " + gguf_value_type_name(elem_type) +
                      " array elements, more than the " + std::to_string(in.remaining()) + " bytes left can hold", kTruncated);
  }
  if (elem_type == GgufValueType::ARRAY && depth >= kMaxArrayDepth)
    fail(in.path, in.context + " nests arrays more than " + std::to_string(kMaxArrayDepth) + " deep", kCorrupt);
  json out = json::array();
  auto& elements = out.get_ref<json::array_t&>();
  elements.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    if (elem_type == GgufValueType::ARRAY) {
      GgufValueType inner;
      elements.push_back(read_array(in, &inner, depth + 1));
    } else {
      elements.push_back(read_scalar(in, elem_type));
    }
  }
  *elem_type_out = elem_type;
  return out;
}

GgufKV read_kv(Cursor& in, uint64_t index) {
  in.context = "metadata pair " + std::to_string(index);
  GgufKV kv;
  kv.key = in.read_string();
  in.context = "metadata key " + detail::quoted(kv.key);
  kv.value.type = read_value_type(in, "value type");
  if (kv.value.type == GgufValueType::ARRAY) kv.value.value = read_array(in, &kv.value.elem_type, 1);
  else kv.value.value = read_scalar(in, kv.value.type);
  return kv;
}

uint32_t read_alignment(const fs::path& path, const std::vector<GgufKV>& metadata) {
  for (const auto& kv : metadata) {
    if (kv.key != detail::kGgufAlignmentKey) continue;
    if (kv.value.type != GgufValueType::UINT32) {
      fail(path, std::string(detail::kGgufAlignmentKey) + " is " + gguf_value_type_name(kv.value.type) + ", not UINT32",
           kCorrupt);
    }
    const auto alignment = kv.value.value.get<uint32_t>();
    if (!std::has_single_bit(alignment))
      fail(path, std::string(detail::kGgufAlignmentKey) + " is " + std::to_string(alignment) + ", not a power of two", kCorrupt);
    return alignment;
  }
  return detail::kGgufDefaultAlignment;
}

GgufTensorInfo read_tensor_info(Cursor& in, uint64_t index, uint32_t alignment) {
  in.context = "tensor info " + std::to_string(index);
  GgufTensorInfo t;
  t.name = in.read_string();
  const std::string where = "tensor " + detail::quoted(t.name);
  in.context = where;
  if (t.name.size() > detail::kGgufMaxNameBytes) {
    fail(in.path, where + " has a name of " + std::to_string(t.name.size()) + " bytes (GGUF allows at most " +
                      std::to_string(detail::kGgufMaxNameBytes) + ")", kCorrupt);
  }
  const uint32_t n_dims = in.read<uint32_t>();
  if (n_dims > detail::kGgufMaxDims)
    fail(in.path, where + " has " + std::to_string(n_dims) + " dimensions (GGUF allows at most 4)", kCorrupt);
  int64_t n_elements = 1;
  for (uint32_t i = 0; i < n_dims; ++i) {
    const uint64_t dim = in.read<uint64_t>();
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(in.path, where + " ne[" + std::to_string(i) + "] = " + std::to_string(dim) + " is too large", kCorrupt);
    if (__builtin_mul_overflow(n_elements, static_cast<int64_t>(dim), &n_elements))
      fail(in.path, where + " has dimensions whose element count overflows", kCorrupt);
    t.ne.push_back(static_cast<int64_t>(dim));
  }
  const uint32_t type_id = in.read<uint32_t>();
  const GgmlTypeInfo* type = ggml_type_info(type_id);
  if (!type) {
    fail(in.path, where + " has unknown or unsupported ggml type id " + std::to_string(type_id),
         "llmtune reads F32, F16, BF16, F64, I8..I64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 and Q2_K..Q8_K; "
         "re-quantize the model to one of these");
  }
  t.type = type->type;
  const int64_t ne0 = t.ne.empty() ? 1 : t.ne[0];
  if (ne0 % type->block_size != 0) {
    fail(in.path, where + " of type " + type->name + " has ne[0] = " + std::to_string(ne0) +
                      ", not a multiple of the block size " + std::to_string(type->block_size), kCorrupt);
  }
  // n_elements is a multiple of ne[0], hence of the block size.
  if (__builtin_mul_overflow(static_cast<uint64_t>(n_elements / type->block_size), static_cast<uint64_t>(type->type_size),
                             &t.n_bytes))
    fail(in.path, where + " has dimensions whose byte count overflows", kCorrupt);
  t.offset = in.read<uint64_t>();
  if (t.offset % alignment != 0) {
    fail(in.path, where + " has data offset " + std::to_string(t.offset) + ", not a multiple of the alignment " +
                      std::to_string(alignment), kCorrupt);
  }
  return t;
}

// Each tensor's bytes lie inside the data section, and no two tensors share a byte. ggml's own
// reader also demands that the offsets, in info order, be the running sum of the padded sizes;
// that layout is not needed to read a file safely (gguf-py does not demand it either), so it is
// not required here. GgufWriter always produces it.
void check_layout(const fs::path& path, const std::vector<GgufTensorInfo>& tensors, uint64_t data_size) {
  std::vector<const GgufTensorInfo*> order;
  for (const auto& t : tensors) {
    uint64_t end = 0;
    if (__builtin_add_overflow(t.offset, t.n_bytes, &end) || end > data_size) {
      fail(path, "tensor " + detail::quoted(t.name) + " spans data bytes [" + std::to_string(t.offset) + ", " +
                     std::to_string(t.offset) + " + " + std::to_string(t.n_bytes) + "), past the end of the " +
                     std::to_string(data_size) + "-byte data section", kTruncated);
    }
    if (t.n_bytes > 0) order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i - 1]->offset + order[i - 1]->n_bytes > order[i]->offset)
      fail(path, "tensor " + detail::quoted(order[i]->name) + " overlaps tensor " + detail::quoted(order[i - 1]->name), kCorrupt);
  }
}

}  // namespace

std::shared_ptr<GgufFile> GgufFile::open(const fs::path& path) {
  std::shared_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  const detail::Mapping mapping = detail::map_file(path, 24, "pass a .gguf file", "too short for the 24-byte GGUF header", kTruncated);
  void* map = mapping.data;
  const uint64_t file_size = mapping.size;
  file->map_ = map;
  file->map_size_ = file_size;

  Cursor in{path, static_cast<const uint8_t*>(map), file_size};
  const uint32_t magic = in.read<uint32_t>();
  const uint32_t version = in.read<uint32_t>();
  // Big-endian files: newer writers byte-swap the magic too, older ones only the fields after it.
  if (magic == __builtin_bswap32(detail::kGgufMagic) ||
      (magic == detail::kGgufMagic && (version & 0xFFFF) == 0 && version != 0)) {
    fail(path, "this is a big-endian GGUF file, which llmtune does not read",
         "convert it with gguf-py's gguf-convert-endian script first");
  }
  if (magic != detail::kGgufMagic) {
    fail(path, "not a GGUF file (the first 4 bytes are not \"GGUF\")", "pass a .gguf file");
  }
  if (version == 1) fail(path, "GGUF version 1 is not supported (only 2 and 3)", "re-convert the model with a current llama.cpp");
  if (version != 2 && version != 3)
    fail(path, "unsupported GGUF version " + std::to_string(version) + " (llmtune reads 2 and 3)", kCorrupt);
  file->version_ = version;

  const uint64_t n_tensors = in.read<uint64_t>();
  const uint64_t n_kv = in.read<uint64_t>();
  // The smallest KV pair is a 9-byte key field, a type and a 1-byte value; the smallest tensor
  // info is a name length, n_dims, a type and an offset.
  if (n_kv > in.remaining() / 13)
    fail(path, "header claims " + std::to_string(n_kv) + " metadata pairs, more than the file can hold", kTruncated);
  if (n_tensors > in.remaining() / 24)
    fail(path, "header claims " + std::to_string(n_tensors) + " tensors, more than the file can hold", kTruncated);

  std::unordered_set<std::string> seen;
  file->metadata_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKV kv = read_kv(in, i);
    if (!seen.insert(kv.key).second) fail(path, "duplicate metadata key " + detail::quoted(kv.key), kCorrupt);
    file->metadata_.push_back(std::move(kv));
  }
  file->alignment_ = read_alignment(path, file->metadata_);

  seen.clear();
  file->tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t = read_tensor_info(in, i, file->alignment_);
    if (!seen.insert(t.name).second) fail(path, "duplicate tensor name " + detail::quoted(t.name), kCorrupt);
    file->tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment. A file without tensor data may
  // end before that padding.
  uint64_t data_start = 0;
  if (!detail::gguf_pad(in.pos, file->alignment_, &data_start) || data_start > file_size) {
    const bool has_data = std::any_of(file->tensors_.begin(), file->tensors_.end(), [](const auto& t) { return t.n_bytes > 0; });
    if (has_data) {
      fail(path, "the file ends before its data section (which starts at offset " + std::to_string(data_start) + ")",
           kTruncated);
    }
    data_start = file_size;
  }
  file->data_start_ = data_start;
  check_layout(path, file->tensors_, file_size - data_start);
  return file;
}

GgufFile::~GgufFile() {
  if (map_) ::munmap(map_, map_size_);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  for (const auto& kv : metadata_)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const uint8_t* GgufFile::data(const GgufTensorInfo& t) const {
  const uint64_t data_size = map_size_ - data_start_;
  if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
    fail(path_, "tensor " + detail::quoted(t.name) + " does not lie inside this file's data section",
         "pass a GgufTensorInfo from this file's tensors() (a bug in the caller)");
  }
  return static_cast<const uint8_t*>(map_) + data_start_ + t.offset;
}

at::Tensor GgufFile::raw(const GgufTensorInfo& t) const {
  const uint8_t* bytes = data(t);
  const auto options = at::TensorOptions().dtype(at::kByte).device(at::kCPU);
  if (t.n_bytes == 0) return at::empty({0}, options);
  // The deleter owns the file, so the mapping outlives every view of it. The mapping is
  // read-only: writing into the tensor faults.
  auto keep = shared_from_this();
  return at::from_blob(const_cast<uint8_t*>(bytes), {static_cast<int64_t>(t.n_bytes)}, [keep](void*) {}, options);
}

}  // namespace llmtune::io
