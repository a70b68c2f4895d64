// Model directory resolution: local paths, and repo ids in a fake Hugging Face hub cache built per
// test (cross-checked with huggingface_hub's own offline lookup).
#include <ATen/Functions.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>

#include "io/io_test_util.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using llmtune::testing::run_python;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;

// Sets (or unsets) an environment variable for the scope of a test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value->c_str(), 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// models--org--name with two snapshots; "old" is named by refs/main, "new" was modified later.
fs::path make_repo(const fs::path& hub, bool with_refs) {
  const fs::path repo = hub / "models--org--tiny-model.v2";
  for (const char* rev : {"1111111111111111111111111111111111111111", "2222222222222222222222222222222222222222"}) {
    fs::create_directories(repo / "snapshots" / rev);
    write_bytes(repo / "snapshots" / rev / "config.json", "{}");
  }
  const auto now = fs::file_time_type::clock::now();
  fs::last_write_time(repo / "snapshots" / "1111111111111111111111111111111111111111", now - std::chrono::hours(2));
  fs::last_write_time(repo / "snapshots" / "2222222222222222222222222222222222222222", now - std::chrono::hours(1));
  if (with_refs) {
    fs::create_directories(repo / "refs");
    write_bytes(repo / "refs" / "main", "1111111111111111111111111111111111111111");
  }
  return repo;
}

TEST(HfDir, LocalDirectoryIsReturnedAsIs) {
  TempDir dir;
  EXPECT_EQ(resolve_model_dir(dir.path().string()).string(), dir.path().string());
}

TEST(HfDir, RepoIdUsesTheSnapshotRefsMainNamesLikeHuggingFaceHub) {
  TempDir dir;
  ScopedEnv cache("HF_HUB_CACHE", (dir / "hub").string());
  ScopedEnv offline("HF_HUB_OFFLINE", "1");
  const fs::path repo = make_repo(dir / "hub", true);
  const fs::path resolved = resolve_model_dir("org/tiny-model.v2");
  EXPECT_EQ(resolved.string(), (repo / "snapshots" / "1111111111111111111111111111111111111111").string());
  // huggingface_hub resolves the same repo id to the same snapshot, offline.
  const auto out = run_python(dir.path(), R"(
from huggingface_hub import snapshot_download
print(snapshot_download("org/tiny-model.v2", local_files_only=True), end="")
)");
  EXPECT_EQ(out, resolved.string());
  // The hub stores files as symlinks into blobs/; the weights load through them.
  fs::create_directories(repo / "blobs");
  save_safetensors(repo / "blobs" / "0a1b2c", {{"w", at::ones({2, 2})}});
  fs::create_symlink("../../blobs/0a1b2c", resolved / "model.safetensors");
  EXPECT_EQ(WeightFiles::open(resolved).names(), std::vector<std::string>{"w"});
}

TEST(HfDir, WithoutRefsTheNewestSnapshotIsUsed) {
  TempDir dir;
  ScopedEnv cache("HF_HUB_CACHE", (dir / "hub").string());
  const fs::path repo = make_repo(dir / "hub", false);
  EXPECT_EQ(resolve_model_dir("org/tiny-model.v2").string(), (repo / "snapshots" / "2222222222222222222222222222222222222222").string());
  // refs/main naming a snapshot that is not there falls back to the newest too.
  fs::create_directories(repo / "refs");
  write_bytes(repo / "refs" / "main", "3333333333333333333333333333333333333333\n");
  EXPECT_EQ(resolve_model_dir("org/tiny-model.v2").string(), (repo / "snapshots" / "2222222222222222222222222222222222222222").string());
}

TEST(HfDir, CacheLocationFollowsHfHomeThenXdgThenHome) {
  TempDir dir;
  ScopedEnv cache("HF_HUB_CACHE", std::nullopt);
  {
    ScopedEnv home("HF_HOME", (dir / "hf").string());
    const fs::path repo = make_repo(dir / "hf" / "hub", true);
    EXPECT_EQ(resolve_model_dir("org/tiny-model.v2").parent_path().parent_path().string(), repo.string());
  }
  ScopedEnv hf_home("HF_HOME", std::nullopt);
  {
    ScopedEnv xdg("XDG_CACHE_HOME", (dir / "xdg").string());
    EXPECT_EQ(hf_hub_cache_dir().string(), (dir / "xdg" / "huggingface" / "hub").string());
  }
  ScopedEnv xdg("XDG_CACHE_HOME", std::nullopt);
  ScopedEnv home("HOME", (dir / "user").string());
  const fs::path repo = make_repo(dir / "user" / ".cache" / "huggingface" / "hub", true);
  EXPECT_EQ(resolve_model_dir("org/tiny-model.v2").parent_path().parent_path().string(), repo.string());
}

TEST(HfDir, NotFoundListsEveryPlaceAndNeverDownloads) {
  TempDir dir;
  ScopedEnv cache("HF_HUB_CACHE", (dir / "hub").string());
  try {
    resolve_model_dir("meta-llama/Llama-3.2-1B");
    FAIL() << "no error";
  } catch (const ModelLoadError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_EQ(what.rfind("meta-llama/Llama-3.2-1B: ", 0), 0u) << what;
    EXPECT_NE(what.find((dir / "hub" / "models--meta-llama--Llama-3.2-1B" / "snapshots").string()), std::string::npos) << what;
    EXPECT_NE(what.find("never downloads"), std::string::npos) << what;
    EXPECT_NE(what.find("huggingface-cli download meta-llama/Llama-3.2-1B"), std::string::npos) << what;
  }
  // A path that is not a repo id is reported as a missing directory only.
  try {
    resolve_model_dir((dir / "nope").string());
    FAIL() << "no error";
  } catch (const ModelLoadError& e) {
    EXPECT_NE(std::string(e.what()).find("no such local directory"), std::string::npos) << e.what();
  }
}

TEST(HfDir, AFileIsNotAModelDirectory) {
  TempDir dir;
  write_bytes(dir / "model.safetensors", "x");
  EXPECT_THROW(resolve_model_dir((dir / "model.safetensors").string()), ModelLoadError);
}

}  // namespace
}  // namespace llmtune::io
