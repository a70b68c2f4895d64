// Model directory resolution: a path, or a repo id in the local Hugging Face hub cache
// (huggingface_hub's layout: models--org--name/{refs/main, snapshots/<commit>/}); config.json's
// dtype and the tokenizer files, as every writer of a model directory handles them.
#include "llmtune/io/hf_dir.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <string_view>
#include <vector>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// "org/name" or "name", with the characters the Hub allows; anything else is surely a path.
bool looks_like_repo_id(const std::string& spec) {
  if (spec.empty() || spec.front() == '/' || spec.back() == '/' || spec.find("..") != std::string::npos) return false;
  int slashes = 0;
  for (char c : spec) {
    if (c == '/') ++slashes;
    else if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return slashes <= 1;
}

std::string trimmed_first_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
  return line;
}

// The snapshot refs/main points at, else the newest one; empty when there is none.
fs::path pick_snapshot(const fs::path& repo_dir) {
  std::error_code ec;
  const fs::path snapshots = repo_dir / "snapshots";
  const std::string main_rev = trimmed_first_line(repo_dir / "refs" / "main");
  if (!main_rev.empty() && main_rev.find('/') == std::string::npos && main_rev != ".." &&
      fs::is_directory(snapshots / main_rev, ec)) {
    return snapshots / main_rev;
  }
  fs::path newest;
  fs::file_time_type newest_time{};
  for (const auto& entry : fs::directory_iterator(snapshots, ec)) {
    if (!entry.is_directory(ec)) continue;
    const auto t = entry.last_write_time(ec);
    if (ec) continue;
    if (newest.empty() || t > newest_time) newest = entry.path(), newest_time = t;
  }
  if (!newest.empty() && !main_rev.empty()) {
    spdlog::warn("{}: refs/main names snapshot {} which is absent; using the newest snapshot {}", repo_dir.string(),
                 main_rev, newest.filename().string());
  }
  return newest;
}

}  // namespace

fs::path hf_hub_cache_dir() {
  if (auto v = env("HF_HUB_CACHE"); !v.empty()) return v;
  if (auto v = env("HF_HOME"); !v.empty()) return fs::path(v) / "hub";
  if (auto v = env("XDG_CACHE_HOME"); !v.empty()) return fs::path(v) / "huggingface" / "hub";
  if (auto v = env("HOME"); !v.empty()) return fs::path(v) / ".cache" / "huggingface" / "hub";
  return fs::path(".cache") / "huggingface" / "hub";
}

fs::path resolve_model_dir(const std::string& spec) {
  std::error_code ec;
  std::vector<std::string> looked;
  const fs::path as_path(spec);
  if (fs::is_directory(as_path, ec)) return as_path;
  if (fs::exists(as_path, ec)) {
    throw ModelLoadError(spec + ": is a file, not a model directory (pass the directory holding config.json and the weights)");
  }
  looked.push_back(spec + " (no such local directory)");

  if (looks_like_repo_id(spec)) {
    std::string folder = "models--" + spec;
    for (size_t pos; (pos = folder.find('/')) != std::string::npos;) folder.replace(pos, 1, "--");
    const fs::path repo_dir = hf_hub_cache_dir() / folder;
    const fs::path snapshot = pick_snapshot(repo_dir);
    if (!snapshot.empty()) {
      spdlog::debug("model {}: using the hub cache snapshot {}", spec, snapshot.string());
      return snapshot;
    }
    looked.push_back((repo_dir / "snapshots").string() + " (no snapshot in the Hugging Face cache)");
  }

  std::string message = spec + ": model not found; looked at ";
  for (size_t i = 0; i < looked.size(); ++i) message += (i ? "; " : "") + looked[i];
  message += " (llmtune never downloads: run `huggingface-cli download " +
             (looks_like_repo_id(spec) ? spec : std::string("org/name")) +
             "` or pass a local model directory)";
  throw ModelLoadError(message);
}

c10::ScalarType dtype_from_config_name(const std::string& name, c10::ScalarType fallback) {
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  if (name == "float32") return c10::kFloat;
  if (!name.empty() && log::first_time("config_dtype." + name))
    spdlog::warn("config.json dtype '{}' is not one of bfloat16, float16, float32; using {}", name,
                 fallback == c10::ScalarType::Undefined ? std::string("each tensor's stored dtype") : c10::toString(fallback));
  return fallback;
}

std::string config_dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kFloat: return "float32";
    default: return "";
  }
}

void write_config_with_dtype(const fs::path& base_dir, const fs::path& out_dir, c10::ScalarType dtype) {
  auto config = read_json_file<ModelLoadError>(base_dir / "config.json", "config.json");
  const std::string name = config_dtype_name(dtype);
  if (!name.empty()) {
    bool set = false;
    for (const char* key : {"dtype", "torch_dtype"})
      if (config.contains(key)) config[key] = name, set = true;
    if (!set) config["dtype"] = name;
  }
  write_file_atomic(out_dir / "config.json", config.dump(2) + "\n");
}

const std::vector<std::string>& tokenizer_files() {
  static const std::vector<std::string> files{"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
                                              "chat_template.json", "vocab.json", "merges.txt"};
  return files;
}

int copy_tokenizer_files(const fs::path& from, const fs::path& to) {
  int copied = 0;
  for (const auto& name : tokenizer_files()) {
    if (!fs::exists(from / name)) continue;
    fs::copy_file(from / name, to / name, fs::copy_options::overwrite_existing);
    ++copied;
  }
  return copied;
}

}  // namespace llmtune::io
