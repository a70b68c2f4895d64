// WeightFiles: one name -> tensor view over model.safetensors or the shards of an index, with the
// checks transformers makes (every shard present, every indexed tensor in its shard).
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

#include "llmtune/io/safetensors.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "safetensors_detail.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using detail::fail;

constexpr uintmax_t kMaxIndexBytes = 100'000'000;

bool is_pickle(const fs::path& p) {
  const auto ext = p.extension();
  return ext == ".bin" || ext == ".pt" || ext == ".pth";
}

[[noreturn]] void refuse_pickle(const fs::path& where, const fs::path& dir) {
  throw ModelLoadError(
      where.string() + ": only pickled PyTorch weights (.bin/.pt) found; llmtune refuses them because loading a "
      "pickle can execute arbitrary code (convert once with: python -c \"from transformers import "
      "AutoModelForCausalLM as M; M.from_pretrained('" + dir.string() + "').save_pretrained('OUT', "
      "safe_serialization=True)\" and pass OUT)");
}

std::string read_small_file(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) fail(path, "cannot read: " + ec.message(), "check the path and its permissions");
  if (size > kMaxIndexBytes) fail(path, "index is " + std::to_string(size) + " bytes, over the 100 MB limit", "the index is corrupt; re-download it");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in) fail(path, "cannot read", "check the file's permissions");
  return ss.str();
}

// A shard name from an index must stay inside the checkpoint directory.
bool is_safe_shard_name(const std::string& name) {
  const fs::path p(name);
  if (name.empty() || p.is_absolute()) return false;
  for (const auto& part : p)
    if (part == "..") return false;
  return true;
}

}  // namespace

WeightFiles WeightFiles::open(const fs::path& path) {
  WeightFiles ckpt;
  ckpt.path_ = path;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) {
    throw ModelLoadError(path.string() + ": no such file or directory (pass a model directory or a .safetensors file)");
  }

  fs::path index_path;
  if (fs::is_directory(status)) {
    if (fs::is_regular_file(path / "model.safetensors")) {
      ckpt = open(path / "model.safetensors");
      ckpt.path_ = path;
      return ckpt;
    }
    index_path = path / "model.safetensors.index.json";
    if (!fs::is_regular_file(index_path)) {
      for (const auto& entry : fs::directory_iterator(path, ec))
        if (entry.is_regular_file() && is_pickle(entry.path())) refuse_pickle(path, path);
      throw ModelLoadError(path.string() + ": no model.safetensors or model.safetensors.index.json "
                           "(pass a Hugging Face model directory with safetensors weights)");
    }
  } else if (path.string().ends_with(".index.json")) {
    index_path = path;
  } else if (is_pickle(path)) {
    refuse_pickle(path, path.parent_path());
  } else {
    auto file = SafetensorsFile::open(path);
    for (const auto& name : file->names()) ckpt.where_.emplace(name, file);
    return ckpt;
  }

  // Sharded: only weight_map is read (newer transformers add keys to "metadata").
  nlohmann::json index;
  try {
    index = parse_json_bounded<nlohmann::json>(read_small_file(index_path));
  } catch (const nlohmann::json::exception& e) {
    fail(index_path, std::string("index is not valid JSON: ") + e.what(), "the index is corrupt; re-download it");
  } catch (const JsonTooDeep& e) {
    fail(index_path, std::string("index refused: ") + e.what(), "the index is corrupt; re-download it");
  }
  if (!index.is_object() || !index.contains("weight_map"))
    fail(index_path, "index has no \"weight_map\" object", "the index is corrupt; re-download it");
  const auto& weight_map = index.at("weight_map");
  if (!weight_map.is_object())
    fail(index_path, "\"weight_map\" is a JSON " + std::string(weight_map.type_name()) + ", not an object", "the index is corrupt; re-download it");

  const fs::path dir = index_path.parent_path();
  std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
  for (const auto& [name, shard_json] : weight_map.items()) {
    if (!shard_json.is_string() || !is_safe_shard_name(shard_json.get<std::string>())) {
      fail(index_path, "weight_map entry " + detail::quoted(name) + " is not a shard file name inside the directory",
           "the index is corrupt; re-download it");
    }
    const auto shard_name = shard_json.get<std::string>();
    auto it = shards.find(shard_name);
    if (it == shards.end()) {
      const fs::path shard_path = dir / shard_name;
      if (!fs::is_regular_file(shard_path)) {
        throw ModelLoadError(index_path.string() + ": shard " + detail::quoted(shard_name) + " is missing from " +
                             dir.string() + " (the download is incomplete; download the model again)");
      }
      it = shards.emplace(shard_name, SafetensorsFile::open(shard_path)).first;
    }
    if (!it->second->contains(name)) {
      fail(it->second->path(), "tensor " + detail::quoted(name) + " is listed in " + index_path.filename().string() +
                                   " but not stored in this shard", "the checkpoint is inconsistent; re-download it");
    }
    ckpt.where_.emplace(name, it->second);
  }
  size_t unindexed = 0;
  for (const auto& [shard_name, file] : shards)
    for (const auto& name : file->names()) unindexed += ckpt.where_.count(name) == 0;
  if (unindexed > 0) {
    spdlog::warn("{}: {} tensors stored in shards are not listed in weight_map; ignoring them", index_path.string(), unindexed);
  }
  return ckpt;
}

std::vector<std::string> WeightFiles::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

bool WeightFiles::contains(const std::string& name) const { return where_.count(name) > 0; }

const TensorInfo& WeightFiles::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    fail(path_, "no tensor " + detail::quoted(name) + " in this checkpoint",
         "it holds " + std::to_string(where_.size()) + " tensors; check the name or the model family");
  }
  return it->second->info(name);
}

at::Tensor WeightFiles::tensor(const std::string& name) const {
  info(name);  // the error for a missing name
  return where_.at(name)->tensor(name);
}

void WeightFiles::release(const std::string& name) const {
  info(name);
  where_.at(name)->release(name);
}

}  // namespace llmtune::io
