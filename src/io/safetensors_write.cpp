// The safetensors writer, byte for byte what the reference (Rust) writer emits (FORMATS.md §1.3),
// and transformers' sharded layout on top of it (§1.4).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cstdio>
#include <numeric>
#include <set>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"
#include "safetensors_detail.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using Named = std::pair<std::string, at::Tensor>;

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian; big-endian hosts need byte swaps");

// A JSON string literal as serde_json writes it (UTF-8 kept, control characters escaped).
std::string json_string(const fs::path& path, const std::string& s, const char* what) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    throw IoError(path.string() + ": " + what + " " + detail::quoted(s) + " is not valid UTF-8 (rename it)");
  }
}

const detail::DtypeRow& row_of(const fs::path& path, const std::string& name, const at::Tensor& t) {
  if (!t.defined()) throw IoError(path.string() + ": tensor " + detail::quoted(name) + " is undefined (a bug in the caller)");
  const auto* row = detail::find_dtype(t.scalar_type());
  if (!row) {
    throw IoError(path.string() + ": tensor " + detail::quoted(name) + " has dtype " + c10::toString(t.scalar_type()) +
                  ", which safetensors cannot store (convert it with .to(...) first)");
  }
  return *row;
}

bool is_shard_name(const std::string& file, const std::string& prefix) {
  // prefix-ddddd-of-ddddd.safetensors, the names transformers cleans up before saving.
  const std::string tail = ".safetensors";
  if (!file.starts_with(prefix + "-") || !file.ends_with(tail)) return false;
  const std::string mid = file.substr(prefix.size() + 1, file.size() - prefix.size() - 1 - tail.size());
  if (mid.size() != 14 || mid.substr(5, 4) != "-of-") return false;
  for (size_t i : {0, 1, 2, 3, 4, 9, 10, 11, 12, 13})
    if (!std::isdigit(static_cast<unsigned char>(mid[i]))) return false;
  return true;
}

}  // namespace

namespace {

// The writer proper: the header from the specs, then each tensor's bytes as produce(i) yields it,
// so only one tensor needs to be in memory at a time.
void write_safetensors(const fs::path& path, const std::vector<TensorSpec>& specs,
                       const std::function<at::Tensor(size_t)>& produce, const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  std::vector<const detail::DtypeRow*> rows;
  for (const auto& spec : specs) {
    const std::string& name = spec.name;
    if (name == "__metadata__") throw IoError(path.string() + ": \"__metadata__\" cannot be a tensor name (rename the tensor)");
    if (!seen.insert(name).second) throw IoError(path.string() + ": duplicate tensor name " + detail::quoted(name) + " (names must be unique)");
    const auto* row = detail::find_dtype(spec.dtype);
    if (!row) {
      throw IoError(path.string() + ": tensor " + detail::quoted(name) + " has dtype " + c10::toString(spec.dtype) +
                    ", which safetensors cannot store (convert it with .to(...) first)");
    }
    rows.push_back(row);
  }
  // Rust prepare(): widest alignment first (dtype descending in enum order), then name ascending.
  std::vector<size_t> order(specs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (rows[a]->rank != rows[b]->rank) return rows[a]->rank > rows[b]->rank;
    return specs[a].name < specs[b].name;
  });

  // transformers refuses shards without a format; ours are always PyTorch-layout.
  auto meta = metadata;
  meta.emplace("format", "pt");
  std::string header = "{\"__metadata__\":{";
  bool first = true;
  for (const auto& [key, value] : meta) {
    if (!first) header += ',';
    first = false;
    header += json_string(path, key, "metadata key") + ':' + json_string(path, value, "metadata value");
  }
  header += '}';
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& spec = specs[i];
    const uint64_t n_bytes = spec.n_bytes();
    header += ',' + json_string(path, spec.name, "tensor name") + ":{\"dtype\":\"" + std::string(rows[i]->name) + "\",\"shape\":[";
    for (size_t d = 0; d < spec.shape.size(); ++d) header += (d ? "," : "") + std::to_string(spec.shape[d]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + n_bytes) + "]}";
    offset += n_bytes;
  }
  header += '}';
  // Padded so the data, and so every tensor, starts 8-aligned.
  header.append((8 - header.size() % 8) % 8, ' ');

  AtomicFile out(path);
  const uint64_t header_size = header.size();
  out.write(&header_size, 8);
  out.write(header.data(), header.size());
  for (size_t i : order) {
    const at::Tensor t = produce(i).detach().cpu().contiguous();
    if (t.scalar_type() != specs[i].dtype || t.sizes().vec() != specs[i].shape)
      throw IoError(path.string() + ": tensor " + detail::quoted(specs[i].name) + " came out as " + c10::toString(t.scalar_type()) +
                    " " + c10::str(t.sizes()) + ", planned " + c10::toString(specs[i].dtype) + " " + c10::str(specs[i].shape) +
                    " (internal error)");
    if (t.numel() > 0) out.write(t.const_data_ptr(), t.nbytes());
  }
  out.commit();
}

}  // namespace

uint64_t TensorSpec::n_bytes() const {
  uint64_t n = c10::elementSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

void save_safetensors(const fs::path& path, const std::vector<Named>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    row_of(path, name, t);  // undefined / unsupported dtype: a named error
    specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  }
  write_safetensors(path, specs, [&](size_t i) { return tensors[i].second; }, metadata);
}

std::vector<fs::path> save_sharded(const fs::path& dir, const std::vector<Named>& tensors, uint64_t max_shard_bytes,
                                   const std::string& prefix) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    row_of(dir, name, t);
    specs.push_back({name, t.scalar_type(), t.sizes().vec()});
  }
  return save_sharded_lazy(dir, specs, [&](size_t i) { return tensors[i].second; }, max_shard_bytes, prefix);
}

std::vector<fs::path> save_sharded_lazy(const fs::path& dir, const std::vector<TensorSpec>& specs,
                                        const std::function<at::Tensor(size_t)>& produce, uint64_t max_shard_bytes,
                                        const std::string& prefix) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw IoError(dir.string() + ": cannot create the output directory: " + ec.message() + " (check permissions)");
  std::set<std::string> seen;
  for (const auto& spec : specs)
    if (!seen.insert(spec.name).second) throw IoError(dir.string() + ": duplicate tensor name " + detail::quoted(spec.name) + " (names must be unique)");

  // huggingface_hub split_state_dict_into_shards_factory: greedy in the given order; a tensor over
  // the limit gets a shard of its own, inserted before the shard being filled.
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_bytes = 0, total_bytes = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const uint64_t n_bytes = specs[i].n_bytes();
    total_bytes += n_bytes;
    if (n_bytes > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + n_bytes > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += n_bytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  // One shard at a time, each tensor produced as its bytes are written.
  auto write_shard = [&](const fs::path& file, const std::vector<size_t>& shard) {
    std::vector<TensorSpec> part;
    for (size_t i : shard) part.push_back(specs[i]);
    write_safetensors(file, part, [&](size_t j) { return produce(shard[j]); }, {});
  };
  const fs::path index_path = dir / (prefix + ".safetensors.index.json");
  std::vector<fs::path> written;
  std::set<std::string> keep;
  if (shards.size() == 1) {
    written.push_back(dir / (prefix + ".safetensors"));
    write_shard(written.back(), shards[0]);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      char file[64];
      std::snprintf(file, sizeof file, "-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      const std::string name = prefix + file;
      for (size_t i : shards[s]) weight_map[specs[i].name] = name;
      written.push_back(dir / name);
      write_shard(written.back(), shards[s]);
    }
    nlohmann::json index{{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    // Python's json.dumps(index, indent=2, sort_keys=True) + "\n", which ASCII-escapes like this.
    written.push_back(index_path);
    write_file_atomic(index_path, index.dump(2, ' ', true) + "\n");
  }
  for (const auto& p : written) keep.insert(p.filename().string());

  // Remove weights of an earlier save that the new one replaces (a stale model.safetensors would
  // shadow a new index when the directory is read).
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (keep.count(file) || !entry.is_regular_file()) continue;
    if (is_shard_name(file, prefix) || file == prefix + ".safetensors" || file == index_path.filename().string())
      fs::remove(entry.path(), ec);
  }
  return written;
}

}  // namespace llmtune::io
