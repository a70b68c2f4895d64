// Checkpoints (single file, sharded with an index) and atomic writes: save_sharded matches
// huggingface_hub's split and transformers' index format, and transformers reads what we write.
#include <ATen/Functions.h>
#include <ATen/TensorOperators.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "llmtune/io/atomic_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using llmtune::testing::hex_of;
using llmtune::testing::py_str;
using llmtune::testing::read_bytes;
using llmtune::testing::run_python;
using llmtune::testing::TempDir;
using llmtune::testing::write_bytes;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

// A tiny Llama-like state dict in model order, with one tensor larger than the shard limit.
Named tiny_model() {
  at::manual_seed(3);
  Named out;
  out.emplace_back("model.embed_tokens.weight", at::randn({64, 48}));  // 12288 bytes: over the limit
  for (int l = 0; l < 3; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    out.emplace_back(p + "input_layernorm.weight", at::randn({48}).to(at::kBFloat16));
    out.emplace_back(p + "self_attn.q_proj.weight", at::randn({48, 16}));
    out.emplace_back(p + "mlp.down_proj.weight", at::randn({16, 40}).to(at::kHalf));
  }
  out.emplace_back("model.norm.weight", at::randn({48}));
  out.emplace_back("lm_head.weight", at::randn({10, 48}));
  return out;
}

constexpr uint64_t kShardLimit = 8000;

TEST(SafetensorsSharded, SplitAndIndexMatchHuggingFaceAndTransformersLoadsTheShards) {
  TempDir dir;
  const Named tensors = tiny_model();
  const auto written = save_sharded(dir / "out", tensors, kShardLimit);
  ASSERT_GT(written.size(), 2u);
  EXPECT_EQ(written.back().string(), (dir / "out" / "model.safetensors.index.json").string());
  EXPECT_EQ(written.front().filename().string(), "model-00001-of-0000" + std::to_string(written.size() - 1) + ".safetensors");

  json spec = json::array();
  for (const auto& [name, t] : tensors) spec.push_back({name, t.sizes().vec(), dtype_to_safetensors(t.scalar_type())});
  const auto out = run_python(dir.path(), "SPEC = " + spec.dump() + "\nLIMIT = " + std::to_string(kShardLimit) + R"(
import json, torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from transformers.modeling_utils import load_state_dict
DT = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
state = {name: torch.zeros(shape, dtype=DT[dt]) for name, shape, dt in SPEC}
split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors", max_shard_size=LIMIT)
text = open("out/model.safetensors.index.json").read()
index = json.loads(text)
assert text == json.dumps(index, indent=2, sort_keys=True) + "\n", "index not formatted like transformers"
assert index["weight_map"] == split.tensor_to_filename, (index["weight_map"], split.tensor_to_filename)
assert index["metadata"]["total_size"] == split.metadata["total_size"]
result = {}
for shard in sorted(set(index["weight_map"].values())):
    with safe_open("out/" + shard, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(k for k, v in index["weight_map"].items() if v == shard)
    for k, t in load_state_dict("out/" + shard).items():
        result[k] = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
print(json.dumps(result))
)");
  const json loaded = json::parse(out);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_EQ(loaded.at(name), hex_of(t)) << name;

  // And our reader sees the same checkpoint through the index.
  const WeightFiles ckpt = WeightFiles::open(dir / "out");
  ASSERT_EQ(ckpt.names().size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_TRUE(at::equal(ckpt.tensor(name), t)) << name;
  EXPECT_EQ(ckpt.info("lm_head.weight").dtype, "F32");
  EXPECT_THROW(ckpt.tensor("model.missing"), IoError);
}

TEST(SafetensorsSharded, OneFileWhenItFitsAndStaleShardsAreRemoved) {
  TempDir dir;
  const Named tensors = tiny_model();
  save_sharded(dir.path(), tensors, kShardLimit);
  write_bytes(dir / "config.json", "{}");
  ASSERT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  const auto written = save_sharded(dir.path(), tensors, uint64_t{5} * 1000 * 1000 * 1000);
  ASSERT_EQ(written.size(), 1u);
  EXPECT_EQ(written[0].string(), (dir / "model.safetensors").string());
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir.path())) files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"config.json", "model.safetensors"}));
  // The single file is exactly what save_safetensors writes.
  save_safetensors(dir / "direct.safetensors", tensors);
  EXPECT_TRUE(read_bytes(dir / "direct.safetensors") == read_bytes(dir / "model.safetensors"));
  const WeightFiles ckpt = WeightFiles::open(dir.path());
  EXPECT_EQ(ckpt.names().size(), tensors.size());
}

TEST(SafetensorsCheckpoint, OpensAFileOrAnIndexDirectly) {
  TempDir dir;
  save_sharded(dir.path(), tiny_model(), kShardLimit);
  EXPECT_EQ(WeightFiles::open(dir / "model.safetensors.index.json").names().size(), tiny_model().size());
  const WeightFiles one = WeightFiles::open(dir / "model-00001-of-00003.safetensors");
  EXPECT_FALSE(one.names().empty());
}

// The error of `fn`, checked to be one line naming `path`.
template <typename Error, typename Fn>
std::string error_of(Fn fn, const fs::path& path) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    EXPECT_NE(what.find(path.string()), std::string::npos) << what;
    return what;
  }
  ADD_FAILURE() << "no error for " << path;
  return "";
}

TEST(SafetensorsCheckpoint, MissingShardIsNamed) {
  TempDir dir;
  save_sharded(dir.path(), tiny_model(), kShardLimit);
  fs::remove(dir / "model-00002-of-00003.safetensors");
  const auto what = error_of<ModelLoadError>([&] { WeightFiles::open(dir.path()); }, dir / "model.safetensors.index.json");
  EXPECT_NE(what.find("\"model-00002-of-00003.safetensors\" is missing"), std::string::npos) << what;
}

TEST(SafetensorsCheckpoint, IndexWithoutWeightMap) {
  TempDir dir;
  write_bytes(dir / "model.safetensors.index.json", R"({"metadata": {"total_size": 4}})");
  const auto what = error_of<IoError>([&] { WeightFiles::open(dir.path()); }, dir / "model.safetensors.index.json");
  EXPECT_NE(what.find("no \"weight_map\""), std::string::npos) << what;
}

TEST(SafetensorsCheckpoint, IndexThatIsNotJsonOrPointsOutside) {
  TempDir dir;
  write_bytes(dir / "model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_NE(error_of<IoError>([&] { WeightFiles::open(dir.path()); }, dir / "model.safetensors.index.json").find("not valid JSON"),
            std::string::npos);
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"a": "../secret.safetensors"}})");
  EXPECT_NE(error_of<IoError>([&] { WeightFiles::open(dir.path()); }, dir / "model.safetensors.index.json").find("inside the directory"),
            std::string::npos);
  write_bytes(dir / "model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
  EXPECT_THROW(WeightFiles::open(dir.path()), IoError);
}

TEST(SafetensorsCheckpoint, IndexedTensorAbsentFromItsShard) {
  TempDir dir;
  save_safetensors(dir / "model-00001-of-00001.safetensors", {{"a", at::ones({2})}});
  write_bytes(dir / "model.safetensors.index.json",
              R"({"weight_map": {"a": "model-00001-of-00001.safetensors", "b": "model-00001-of-00001.safetensors"}})");
  const auto what = error_of<IoError>([&] { WeightFiles::open(dir.path()); }, dir / "model-00001-of-00001.safetensors");
  EXPECT_NE(what.find("tensor \"b\" is listed in model.safetensors.index.json but not stored"), std::string::npos) << what;
}

TEST(SafetensorsCheckpoint, PickledWeightsAreRefused) {
  TempDir dir;
  write_bytes(dir / "pytorch_model.bin", "not really a pickle");
  write_bytes(dir / "config.json", "{}");
  const auto what = error_of<ModelLoadError>([&] { WeightFiles::open(dir.path()); }, dir.path());
  EXPECT_NE(what.find("execute arbitrary code"), std::string::npos) << what;
  EXPECT_NE(what.find("save_pretrained('OUT', safe_serialization=True)"), std::string::npos) << what;
  EXPECT_THROW(WeightFiles::open(dir / "pytorch_model.bin"), ModelLoadError);
}

TEST(SafetensorsCheckpoint, DirectoryWithoutWeightsOrMissingPath) {
  TempDir dir;
  const auto what = error_of<ModelLoadError>([&] { WeightFiles::open(dir.path()); }, dir.path());
  EXPECT_NE(what.find("no model.safetensors"), std::string::npos) << what;
  error_of<ModelLoadError>([&] { WeightFiles::open(dir / "nope"); }, dir / "nope");
}

TEST(SafetensorsAtomicFile, UncommittedWriteLeavesTheTargetUntouched) {
  TempDir dir;
  write_bytes(dir / "x.txt", "old");
  {
    AtomicFile f(dir / "x.txt");
    f.write("new", 3);
    EXPECT_TRUE(fs::exists(f.temp_path()));
  }  // destroyed without commit, as when an exception unwinds
  EXPECT_EQ(read_bytes(dir / "x.txt"), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator{}), 1);
  write_file_atomic(dir / "x.txt", "new");
  EXPECT_EQ(read_bytes(dir / "x.txt"), "new");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator{}), 1);
}

TEST(SafetensorsAtomicFile, DirectoryIsReplacedWholeOrNotAtAll) {
  TempDir dir;
  const auto target = dir / "merged";
  {
    AtomicDir out(target);
    write_bytes(out.staging() / "a.txt", "1");
  }
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(fs::is_empty(dir.path()));
  {
    AtomicDir out(target);
    write_bytes(out.staging() / "a.txt", "1");
    out.commit();
  }
  EXPECT_EQ(read_bytes(target / "a.txt"), "1");
  {
    AtomicDir out(target);
    write_bytes(out.staging() / "b.txt", "2");
    out.commit();
  }
  EXPECT_FALSE(fs::exists(target / "a.txt"));
  EXPECT_EQ(read_bytes(target / "b.txt"), "2");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator{}), 1);
}

}  // namespace
}  // namespace llmtune::io
