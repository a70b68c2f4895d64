// The safetensors reader: maps the file, validates the header against FORMATS.md §1.1 before
// anything is trusted, and hands out tensors as zero-copy views of the mapping.
#include "llmtune/io/safetensors.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "safetensors_detail.h"

namespace llmtune::io {
namespace {

using detail::fail;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; big-endian hosts need byte swaps");

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit
const char* const kCorrupt = "the file is corrupt or was not written by a safetensors writer; re-export or re-download it";
const char* const kTruncated = "the file looks truncated; re-download or re-export it";

std::string type_name(const json& j) { return j.type_name(); }

// Parses the header text, refusing duplicate keys at any depth (nlohmann would silently keep one).
json parse_json(const std::filesystem::path& path, std::string_view text) {
  std::vector<std::set<std::string>> seen;  // keys of each open object
  std::string tensor;                       // the current top-level key, for messages
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    // Depth 2 is a tensor's shape or offsets array; anything deeper is hostile (and costs memory).
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) && depth > 2)
      fail(path, "header nests JSON deeper than a safetensors header can", kCorrupt);
    if (event == json::parse_event_t::object_start) {
      seen.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      seen.pop_back();
    } else if (event == json::parse_event_t::key) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (depth == 1) tensor = key;
      if (!seen.back().insert(key).second) {
        if (depth == 1) fail(path, "duplicate tensor name " + detail::quoted(key) + " in the header", kCorrupt);
        fail(path, "duplicate key " + detail::quoted(key) + " inside " + detail::quoted(tensor), kCorrupt);
      }
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    std::string what = e.what();
    if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
    fail(path, "header is not valid JSON: " + what, kCorrupt);
  }
}

// A non-negative JSON integer that fits int64 (shapes and offsets), or an error naming `what`.
uint64_t non_negative(const std::filesystem::path& path, const json& j, const std::string& what) {
  if (j.is_number_unsigned()) {
    uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail(path, what + " is too large", kCorrupt);
    return v;
  }
  if (j.is_number_integer()) fail(path, what + " is negative (" + j.dump() + ")", kCorrupt);
  fail(path, what + " is a JSON " + type_name(j) + ", not an integer", kCorrupt);
}

std::map<std::string, std::string> parse_metadata(const std::filesystem::path& path, const json& j) {
  std::map<std::string, std::string> out;
  if (j.is_null()) return out;
  if (!j.is_object()) fail(path, "__metadata__ is a JSON " + type_name(j) + ", not an object", kCorrupt);
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      fail(path, "__metadata__ value of " + detail::quoted(key) + " is a JSON " + type_name(value) +
                     ", not a string", "metadata must be a flat string-to-string map; re-export the file");
    }
    out[key] = value.get<std::string>();
  }
  return out;
}

// One tensor entry: exactly dtype/shape/data_offsets, consistent with each other and the data size.
TensorInfo parse_entry(const std::filesystem::path& path, const std::string& name, const json& j,
                       uint64_t data_size) {
  const std::string where = "tensor " + detail::quoted(name);
  if (!j.is_object()) fail(path, where + " is a JSON " + type_name(j) + ", not an object", kCorrupt);
  for (const auto& [key, value] : j.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(path, where + " has unexpected field " + detail::quoted(key) + " (expected dtype, shape, data_offsets)", kCorrupt);
  }
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!j.contains(key)) fail(path, where + " has no \"" + key + "\" field", kCorrupt);

  TensorInfo info;
  const json& dtype = j.at("dtype");
  if (!dtype.is_string()) fail(path, where + " has a dtype that is a JSON " + type_name(dtype) + ", not a string", kCorrupt);
  info.dtype = dtype.get<std::string>();
  const auto* row = detail::find_dtype(info.dtype);
  if (!row) fail(path, where + " has unknown dtype " + detail::quoted(info.dtype), kCorrupt);
  if (row->torch == c10::ScalarType::Undefined) {
    fail(path, where + " has unsupported dtype " + detail::quoted(info.dtype),
         "llmtune reads " + detail::supported_dtypes() + "; convert the checkpoint with Python first");
  }

  const json& shape = j.at("shape");
  if (!shape.is_array()) fail(path, where + " has a shape that is a JSON " + type_name(shape) + ", not an array", kCorrupt);
  uint64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t dim = non_negative(path, shape[i], where + " shape[" + std::to_string(i) + "]");
    if (__builtin_mul_overflow(numel, dim, &numel)) fail(path, where + " has a shape whose element count overflows", kCorrupt);
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t n_bytes = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(row->bits / 8), &n_bytes))
    fail(path, where + " has a shape whose byte count overflows", kCorrupt);

  const json& offsets = j.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2)
    fail(path, where + " data_offsets is not an array of two integers [BEGIN, END]", kCorrupt);
  info.begin = non_negative(path, offsets[0], where + " data_offsets[0]");
  info.end = non_negative(path, offsets[1], where + " data_offsets[1]");
  if (info.begin > info.end)
    fail(path, where + " has data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                   "] with BEGIN after END", kCorrupt);
  if (info.end - info.begin != n_bytes) {
    fail(path, where + " holds " + std::to_string(info.end - info.begin) + " bytes but dtype " + info.dtype +
                   " and its shape need " + std::to_string(n_bytes), kCorrupt);
  }
  if (info.end > data_size) {
    fail(path, where + " ends at data byte " + std::to_string(info.end) + ", past the end of the file (" +
                   std::to_string(data_size) + " data bytes)", kTruncated);
  }
  return info;
}

// Sorted by offset, the tensors must tile the data section exactly: no holes, no overlaps, nothing after.
void check_layout(const std::filesystem::path& path, const std::map<std::string, TensorInfo>& infos,
                  uint64_t data_size) {
  std::vector<std::pair<const std::string*, const TensorInfo*>> order;
  for (const auto& [name, info] : infos) order.emplace_back(&name, &info);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second->begin, a.second->end) < std::pair(b.second->begin, b.second->end);
  });
  uint64_t expected = 0;
  const std::string* previous = nullptr;
  for (const auto& [name, info] : order) {
    if (info->begin > expected) {
      fail(path, "data bytes " + std::to_string(expected) + ".." + std::to_string(info->begin) +
                     " belong to no tensor (hole before tensor " + detail::quoted(*name) + ")", kCorrupt);
    }
    if (info->begin < expected)
      fail(path, "tensor " + detail::quoted(*name) + " overlaps tensor " + detail::quoted(*previous), kCorrupt);
    expected = info->end;
    previous = name;
  }
  if (expected != data_size) {
    fail(path, std::to_string(data_size - expected) + " trailing bytes after the last tensor", kCorrupt);
  }
}

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::filesystem::path& path) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const detail::Mapping mapping = detail::map_file(path, 8, "pass a .safetensors file", "too short for the 8-byte header length", kTruncated);
  void* map = mapping.data;
  const uint64_t file_size = mapping.size;
  file->map_ = map;
  file->map_size_ = file_size;

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, 8);
  if (header_size > kMaxHeaderBytes) {
    fail(path, "header length " + std::to_string(header_size) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes", kCorrupt);
  }
  if (header_size > file_size - 8) {
    fail(path, "header length " + std::to_string(header_size) + " runs past the end of the " +
                   std::to_string(file_size) + "-byte file", kTruncated);
  }
  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_size);
  // nlohmann stops at a NUL as at the end of input, which would let bytes after it through.
  if (text.find('\0') != std::string_view::npos) fail(path, "header contains a NUL byte", kCorrupt);
  json header = parse_json(path, text);
  if (!header.is_object()) fail(path, "header is a JSON " + type_name(header) + ", not an object", kCorrupt);

  file->data_start_ = 8 + header_size;
  const uint64_t data_size = file_size - file->data_start_;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") file->metadata_ = parse_metadata(path, value);
    else file->infos_.emplace(key, parse_entry(path, key, value, data_size));
  }
  check_layout(path, file->infos_, data_size);
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(infos_.size());
  for (const auto& [name, info] : infos_) out.push_back(name);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) {
    fail(path_, "no tensor " + detail::quoted(name) + " in this file",
         "it holds " + std::to_string(infos_.size()) + " tensors; check the name");
  }
  return it->second;
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const at::ScalarType dtype = dtype_from_safetensors(ti.dtype);
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  const size_t n_bytes = ti.end - ti.begin;
  if (n_bytes == 0) return at::empty(ti.shape, options);
  auto* data = static_cast<uint8_t*>(map_) + data_start_ + ti.begin;
  const size_t item_size = c10::elementSize(dtype);
  if (reinterpret_cast<uintptr_t>(data) % item_size == 0) {
    // The deleter owns the file, so the mapping outlives every view of it.
    auto keep = shared_from_this();
    return at::from_blob(data, ti.shape, [keep](void*) {}, options);
  }
  // Headers written before the reference writer padded them leave data unaligned; CPU kernels
  // need natural alignment, so such tensors are copied.
  if (log::first_time("safetensors-unaligned:" + path_.string())) {
    spdlog::debug("{}: tensor data is not aligned for its dtype (unpadded header); copying instead of mapping",
                  path_.string());
  }
  at::Tensor out = at::empty(ti.shape, options);
  std::memcpy(out.mutable_data_ptr(), data, n_bytes);
  return out;
}

void SafetensorsFile::release(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(map_);
  // Whole pages inside [begin, end) only; neighbours' pages stay.
  const uintptr_t begin = (base + data_start_ + ti.begin + page - 1) / page * page;
  const uintptr_t end = (base + data_start_ + ti.end) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace llmtune::io
