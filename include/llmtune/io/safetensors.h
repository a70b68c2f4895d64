// safetensors (FORMATS.md §1): a memory-mapped, strictly validated reader for single files and
// sharded checkpoints, and a writer that produces what transformers writes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::io {

struct TensorInfo {
  std::string dtype;            // the file's dtype string: "F32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // data_offsets, relative to the data buffer
};

// One .safetensors file, memory-mapped. Every malformed file is rejected at open() with an
// IoError naming the file and the problem. Tensors returned by tensor() are zero-copy CPU views
// of the mapping (they keep the mapping alive), or copies where the data is not aligned for its
// dtype. The mapping is read-only: writing into a view crashes the process, so callers that modify
// a tensor take `.clone()` or `.to(...)` first.
class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::filesystem::path& path);
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return infos_.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const;  // throws IoError for an unknown name
  at::Tensor tensor(const std::string& name) const;
  // Drops the tensor's pages from this process's resident memory (a read-only private mapping:
  // they are read from the file again if touched). Streaming writers call it once a tensor is
  // consumed, so resident memory stays about one tensor rather than the whole file.
  void release(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_start_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// A model's weight files: model.safetensors, or shards listed by model.safetensors.index.json (or
// any single *.safetensors file given directly). (Training checkpoints are train::checkpoint's.)
class WeightFiles {
 public:
  // `path` is a directory (model.safetensors or model.safetensors.index.json inside, in that
  // order of preference, as transformers does) or a file (a .safetensors file, or an .index.json).
  // A directory holding only pickled weights (*.bin, *.pt, *.pth) is refused with ModelLoadError:
  // unpickling can execute code. Malformed files and indexes throw IoError.
  static WeightFiles open(const std::filesystem::path& path);

  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;  // throws IoError naming the missing tensor
  void release(const std::string& name) const;        // SafetensorsFile::release
  const std::filesystem::path& path() const { return path_; }  // the file or directory opened

 private:
  std::filesystem::path path_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;  // tensor name -> its file
};

// at::ScalarType <-> safetensors dtype string ("F32", ...); throws IoError for unsupported ones.
std::string dtype_to_safetensors(at::ScalarType dtype);
at::ScalarType dtype_from_safetensors(const std::string& dtype);

// Writes one file as the reference writer does: tensors ordered by dtype alignment then name,
// __metadata__ first (with "format": "pt" unless given), header padded with spaces to a multiple
// of 8. Written to a temporary name and renamed into place. Byte-identical to Python's
// safetensors.torch.save_file for the same tensors and metadata when the metadata has one key
// (Rust serializes a HashMap, whose order is random; ours is sorted by key).
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes `tensors` (in the given order) into `dir` as transformers does: one model.safetensors
// when everything fits in `max_shard_bytes`, else model-0000i-of-0000n.safetensors plus
// model.safetensors.index.json (greedy split, FORMATS.md §1.4). Each file is written atomically;
// weight files of an earlier save under the same prefix that the new one does not use are removed
// (so a stale model.safetensors cannot shadow a new index). Returns the files written.
std::vector<std::filesystem::path> save_sharded(const std::filesystem::path& dir,
                                                const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                                                uint64_t max_shard_bytes, const std::string& prefix = "model");
// A tensor to be written: its name, dtype and shape, known before its data exists.
struct TensorSpec {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t n_bytes() const;
};
// The same split, with each tensor produced just as its bytes are written, so peak memory is about
// one tensor: `specs` lists the tensors in order, produce(i) returns tensor i (matching specs[i]).
std::vector<std::filesystem::path> save_sharded_lazy(const std::filesystem::path& dir,
                                                     const std::vector<TensorSpec>& specs,
                                                     const std::function<at::Tensor(size_t)>& produce,
                                                     uint64_t max_shard_bytes, const std::string& prefix = "model");

}  // namespace llmtune::io
