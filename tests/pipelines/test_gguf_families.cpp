// GGUF export and import of the families llama.cpp runs under their own architecture names —
// qwen3, gemma2, gemma3, phi3 (Phi-3 and Phi-4-mini with longrope) and gpt2 — against
// tests/pipelines/gguf_families_reference.py: the exported files carry the keys (order, types,
// values), tensors and types convert_hf_to_gguf.py + llama-quantize write, read back with gguf-py;
// they load back with the transformers logits; and files written with gguf-py the way the
// converter writes them load as the family.
#include <gtest/gtest.h>

#include <ATen/ops/argmax.h>
#include <ATen/ops/tensor.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "llmtune/io/gguf.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace fs = std::filesystem;
using namespace llmtune;
using nlohmann::ordered_json;

namespace {

const char* kScript = "tests/pipelines/gguf_families_reference.py";
const std::vector<std::string> kModels = {"qwen3", "qwen3-tied", "gemma2", "gemma3", "phi3", "phi4-mini", "gpt2"};

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

fs::path work_dir() {
  static const fs::path dir = fs::temp_directory_path() / ("llmtune-gguf-families-" + std::to_string(::getpid()));
  return dir;
}

fs::path gguf_path(const std::string& model, const std::string& type) { return work_dir() / (model + "-" + type + ".gguf"); }

void export_dir(const std::string& model, const std::string& type) {
  io::WeightFiles ckpt = io::WeightFiles::open(fixture(model));
  pipelines::GgufExportOptions o;
  o.type = type;
  pipelines::export_gguf(fixture(model), ckpt.names(), [&](const std::string& n) { return ckpt.tensor(n); },
                         gguf_path(model, type), o);
}

ordered_json file_case(const std::string& model, const std::string& type, ordered_json types) {
  return {{"gguf", gguf_path(model, type).string()}, {"model_dir", fixture(model).string()}, {"type", type},
          {"expected_types", std::move(types)}};
}

// Every export, then one run of the reference over all of them.
const ordered_json& reference() {
  static const ordered_json res = [] {
    fs::remove_all(work_dir());
    fs::create_directories(work_dir());
    ordered_json files = ordered_json::array(), models = ordered_json::array();
    for (const auto& m : kModels) {
      export_dir(m, "f32");
      export_dir(m, "q8_0");
      files.push_back(file_case(m, "f32", {{"*", "F32"}, {"1d", "F32"}}));
      files.push_back(file_case(m, "q8_0", {{"*", "Q8_0"}, {"1d", "F32"}}));
      models.push_back({{"name", m}, {"ours", gguf_path(m, "f32").string()},
                        {"converter_style", (work_dir() / (m + "-converter.gguf")).string()}});
    }
    // llama-quantize's Q4_K_M on width 64, 2 layers: Q4_K falls back to Q5_0 (ne[0] % 256); a fused
    // attn_qkv counts as attn_v, so layer 1's (use_more_bits) is Q6_K → Q8_0, as is its ffn_down;
    // output and a tied token_embd Q6_K → Q8_0; position_embd stays F32.
    export_dir("gpt2", "q4_k_m");
    files.push_back(file_case("gpt2", "q4_k_m",
                              {{"*", "Q5_0"}, {"1d", "F32"}, {"token_embd.weight", "Q8_0"}, {"blk.1.attn_qkv.weight", "Q8_0"},
                               {"blk.1.ffn_down.weight", "Q8_0"}}));
    export_dir("phi3", "q4_k_m");  // untied: output → Q8_0, token_embd keeps the mix's Q4_K → Q5_0
    files.push_back(file_case("phi3", "q4_k_m",
                              {{"*", "Q5_0"}, {"1d", "F32"}, {"output.weight", "Q8_0"}, {"blk.1.attn_qkv.weight", "Q8_0"},
                               {"blk.1.ffn_down.weight", "Q8_0"}}));
    return llmtune::testing::run_json_script(kScript, {{"files", files}, {"models", models},
                                                       {"fixtures", fs::path(LLMTUNE_FIXTURES_DIR).string() + "/models"}});
  }();
  return res;
}

at::Tensor as_tensor(const ordered_json& rows) {
  std::vector<float> flat;
  for (const auto& row : rows)
    for (const auto& v : row) flat.push_back(v.get<float>());
  return at::tensor(flat, at::kFloat).reshape({static_cast<int64_t>(rows.size()), -1});
}

at::Tensor gguf_logits(const fs::path& path, const std::string& model) {
  pipelines::GgufModel m = pipelines::load_gguf_model(path, c10::kCPU, at::kFloat);
  std::vector<int64_t> ids;
  for (const auto& v : reference()["ids"][model]) ids.push_back(v.get<int64_t>());
  return m.model->forward(at::tensor(ids, at::kLong).unsqueeze(0))[0].to(at::kFloat);
}

}  // namespace

TEST(GgufFamilies, FilesHaveTheConvertersKeysTensorsAndTypes) {
  for (const auto& e : reference()["errors"]) ADD_FAILURE() << e.get<std::string>();
}

TEST(GgufFamilies, ExportsLoadBackWithTheTransformersLogits) {
  for (const auto& m : kModels) {
    const at::Tensor hf = as_tensor(reference()["logits"][m]);
    ASSERT_GT(hf.size(0), 16) << m << ": the probe must run past the sliding windows (8) and Phi-4-mini's original context (16)";
    // GGUF's qwen3 has no sliding window (the export warns): the file is the model with full attention.
    const at::Tensor want = m == "qwen3" ? as_tensor(reference()["converter_logits"][m]) : hf;
    EXPECT_LE(llmtune::testing::max_abs_diff(gguf_logits(gguf_path(m, "f32"), m), want), 1e-4) << m;
    // Q8_0: transformers with the same weights (gguf-py's Q8_0 round trip of each matrix).
    const at::Tensor q8 = as_tensor(reference()["q8_0_logits"][m]);
    EXPECT_LE(llmtune::testing::max_abs_diff(gguf_logits(gguf_path(m, "q8_0"), m), q8), 1e-4) << m << " q8_0";
  }
}

TEST(GgufFamilies, ConverterWrittenFilesLoadAsTheFamily) {
  // No llmtune keys: Gemma 2/3 load with llama.cpp's attention scale and sliding pattern, Qwen3
  // without a window; the reference is transformers run with those.
  const ordered_json& ref = reference();  // writes the files
  for (const auto& m : kModels) {
    const fs::path p = work_dir() / (m + "-converter.gguf");
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_LE(llmtune::testing::max_abs_diff(gguf_logits(p, m), as_tensor(ref["converter_logits"][m])), 1e-4) << m;
  }
}

TEST(GgufFamilies, Gpt2CheckpointWithoutTheTransformerPrefixGivesTheSameFile) {
  // OpenAI's own GPT-2 files name tensors "h.0.attn.c_attn.weight", "wte.weight", ...
  fs::create_directories(work_dir());
  io::WeightFiles ckpt = io::WeightFiles::open(fixture("gpt2"));
  std::vector<std::string> bare;
  for (const auto& n : ckpt.names()) bare.push_back(n.substr(std::string("transformer.").size()));
  pipelines::GgufExportOptions o;
  o.type = "f32";
  const fs::path a = work_dir() / "gpt2-prefixed.gguf", b = work_dir() / "gpt2-bare.gguf";
  pipelines::export_gguf(fixture("gpt2"), ckpt.names(), [&](const std::string& n) { return ckpt.tensor(n); }, a, o);
  pipelines::export_gguf(fixture("gpt2"), bare, [&](const std::string& n) { return ckpt.tensor("transformer." + n); }, b, o);
  auto bytes = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(bytes(a), bytes(b));
}

TEST(GgufFamilies, UnsupportedArchitectureNamesTheSupportedOnes) {
  fs::create_directories(work_dir());
  const fs::path p = work_dir() / "bloom.gguf";
  {
    io::GgufWriter w(p);
    w.add_string("general.architecture", "bloom");
    w.commit();
  }
  try {
    pipelines::load_gguf_model(p, c10::kCPU, at::kFloat);
    ADD_FAILURE() << "no error";
  } catch (const ModelLoadError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'bloom' is not supported"), std::string::npos) << msg;
    for (const char* arch : {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2"})
      EXPECT_NE(msg.find(std::string(" ") + arch), std::string::npos) << arch << " missing from: " << msg;
  }
}
