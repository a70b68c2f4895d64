// GGUF export/import against the references: gguf-py (GGUFReader, dequantize, quantize), transformers'
// GGUF loader, PEFT, and a GGUF written by gguf-py's GGUFWriter the way llama.cpp's converter does
// (tests/pipelines/gguf_reference.py). Per-tensor types are compared with the choices of llama.cpp's
// llama-quant.cpp worked out by hand for each fixture shape.
#include <gtest/gtest.h>

#include <ATen/ops/argmax.h>
#include <ATen/ops/tensor.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "llmtune/io/gguf.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace fs = std::filesystem;
using namespace llmtune;
using nlohmann::ordered_json;

namespace {

const char* kScript = "tests/pipelines/gguf_reference.py";
const std::vector<std::string> kFixtures = {"llama3", "tinyllama", "llama-linear", "mistral", "qwen2", "gemma", "smollm2",
                                             "qwen3", "qwen3-tied", "gemma2", "gemma3", "phi3", "phi4-mini", "gpt2"};

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

struct Shared {
  fs::path work;
  ordered_json prep;
};

Shared& shared() {
  static Shared s = [] {
    Shared r;
    r.work = fs::temp_directory_path() / ("llmtune-gguf-" + std::to_string(::getpid()));
    fs::remove_all(r.work);
    fs::create_directories(r.work);
    ordered_json req = {{"phase", "prepare"}, {"work", r.work.string()}, {"fixtures", fs::path(LLMTUNE_FIXTURES_DIR).string() + "/models"},
                        {"models", kFixtures}};
    r.prep = llmtune::testing::run_json_script(kScript, req);
    return r;
  }();
  return s;
}

pipelines::GgufExportReport export_dir(const fs::path& dir, const fs::path& out, const std::string& type, bool ollama = false) {
  io::WeightFiles ckpt = io::WeightFiles::open(dir);
  fs::create_directories(out.parent_path());
  pipelines::GgufExportOptions o;
  o.type = type;
  o.ollama = ollama;
  return pipelines::export_gguf(dir, ckpt.names(), [&](const std::string& n) { return ckpt.tensor(n); }, out, o);
}

fs::path gguf_path(const std::string& model, const std::string& type) {
  return shared().work / (model + "-" + type) / (model + "-" + type + ".gguf");
}

ordered_json file_case(const std::string& model, const fs::path& dir, const std::string& type, ordered_json types) {
  return {{"gguf", gguf_path(model, type).string()}, {"model_dir", dir.string()}, {"type", type}, {"expected_types", types}};
}

at::Tensor ref_logits(const std::string& model) {
  const auto& l = shared().prep["logits"][model];
  std::vector<float> flat;
  for (const auto& row : l)
    for (const auto& v : row) flat.push_back(v.get<float>());
  return at::tensor(flat, at::kFloat).reshape({static_cast<int64_t>(l.size()), -1});
}

at::Tensor gguf_logits(const fs::path& path, const std::string& model) {
  pipelines::GgufModel m = pipelines::load_gguf_model(path, c10::kCPU, at::kFloat);
  std::vector<int64_t> ids;
  for (const auto& v : shared().prep["ids"][model]) ids.push_back(v.get<int64_t>());
  std::vector<int32_t> ids32(ids.begin(), ids.end());
  EXPECT_EQ(m.tokenizer->encode("Hello world, this is a probe of the exported model."), ids32) << path;
  return m.model->forward(at::tensor(ids, at::kLong).unsqueeze(0))[0].to(at::kFloat);
}

}  // namespace

TEST(GgufExport, FilesAgreeWithGgufPyTransformersAndPeft) {
  Shared& s = shared();
  const ordered_json f32 = {{"*", "F32"}, {"1d", "F32"}};
  ordered_json files = ordered_json::array(), hf = ordered_json::array(), lora = ordered_json::array();
  for (const auto& m : kFixtures) {
    export_dir(fixture(m), gguf_path(m, "f32"), "f32", m == "qwen2");
    files.push_back(file_case(m, fixture(m), "f32", f32));
  }
  // Ollama: qwen2's template renders as chatml.
  std::ifstream mf(gguf_path("qwen2", "f32").parent_path() / "Modelfile");
  std::string modelfile((std::istreambuf_iterator<char>(mf)), std::istreambuf_iterator<char>());
  EXPECT_EQ(modelfile.rfind("FROM ./qwen2-f32.gguf\n", 0), 0u) << modelfile;
  EXPECT_NE(modelfile.find("PARAMETER stop \"<|im_end|>\""), std::string::npos) << modelfile;

  for (const auto& [model, type] : std::vector<std::pair<std::string, std::string>>{
           {"tinyllama", "f16"}, {"tinyllama", "bf16"}, {"tinyllama", "q8_0"}, {"qwen2", "q8_0"}, {"gemma", "f16"}})
    export_dir(fixture(model), gguf_path(model, type), type);
  files.push_back(file_case("tinyllama", fixture("tinyllama"), "f16", {{"*", "F16"}, {"1d", "F32"}}));
  files.push_back(file_case("tinyllama", fixture("tinyllama"), "bf16", {{"*", "BF16"}, {"1d", "F32"}}));
  files.push_back(file_case("tinyllama", fixture("tinyllama"), "q8_0", {{"*", "Q8_0"}, {"1d", "F32"}}));
  files.push_back(file_case("qwen2", fixture("qwen2"), "q8_0", {{"*", "Q8_0"}, {"1d", "F32"}}));
  files.push_back(file_case("gemma", fixture("gemma"), "f16", {{"*", "F16"}, {"1d", "F32"}}));

  // llama-quant.cpp on hidden 64 / intermediate 128, 2 layers: output → Q6_K, which ne[0] = 64
  // cannot hold → Q8_0; Q4_K → Q5_0; layer 1 is a use_more_bits layer (i >= 7n/8) → Q6_K → Q8_0.
  export_dir(fixture("tinyllama"), gguf_path("tinyllama", "q4_0"), "q4_0");
  files.push_back(file_case("tinyllama", fixture("tinyllama"), "q4_0", {{"*", "Q4_0"}, {"1d", "F32"}, {"output.weight", "Q8_0"}}));
  export_dir(fixture("tinyllama"), gguf_path("tinyllama", "q4_k_m"), "q4_k_m");
  files.push_back(file_case("tinyllama", fixture("tinyllama"), "q4_k_m",
                            {{"*", "Q5_0"}, {"1d", "F32"}, {"output.weight", "Q8_0"}, {"blk.1.attn_v.weight", "Q8_0"},
                             {"blk.1.ffn_down.weight", "Q8_0"}}));
  // 4 layers of width 256: use_more_bits picks layers 2 ((i - n/8) % 3 == 2) and 3 (i >= 7n/8).
  const fs::path kq = s.work / "kquant";
  export_dir(kq, gguf_path("kquant", "q4_k_m"), "q4_k_m");
  files.push_back(file_case("kquant", kq, "q4_k_m",
                            {{"*", "Q4_K"}, {"1d", "F32"}, {"output.weight", "Q6_K"}, {"blk.2.attn_v.weight", "Q6_K"},
                             {"blk.3.attn_v.weight", "Q6_K"}, {"blk.2.ffn_down.weight", "Q6_K"}, {"blk.3.ffn_down.weight", "Q6_K"}}));
  export_dir(kq, gguf_path("kquant", "q6_k"), "q6_k");
  files.push_back(file_case("kquant", kq, "q6_k", {{"*", "Q6_K"}, {"1d", "F32"}}));
  if (quant::can_quantize(io::GgmlType::Q5_K)) {  // Q4_K_S: attn_v of the first 4 layers → Q5_K
    export_dir(kq, gguf_path("kquant", "q4_k_s"), "q4_k_s");
    ordered_json t = {{"*", "Q4_K"}, {"1d", "F32"}, {"output.weight", "Q6_K"}};
    for (int i = 0; i < 4; ++i) t["blk." + std::to_string(i) + ".attn_v.weight"] = "Q5_K";
    files.push_back(file_case("kquant", kq, "q4_k_s", t));
  }

  // transformers reads llama (no rope scaling, no biases) and qwen2 GGUFs. (It takes a file whose
  // general.name contains "mistral" for a "mistral" architecture that gguf-py 0.19 lacks.)
  for (const auto& m : {"tinyllama", "qwen2"})
    hf.push_back({{"gguf", gguf_path(m, "f32").string()}, {"model_dir", fixture(m).string()}, {"tol", 1e-4}});
  hf.push_back({{"gguf", gguf_path("tinyllama", "f16").string()}, {"model_dir", fixture("tinyllama").string()}, {"tol", 0.05}});

  // LoRA: the adapter, and the merged model exported in F32 beside the base's F32 export.
  export_dir(s.work / "merged", gguf_path("merged", "f32"), "f32");
  for (const auto& kind : {"lora", "rslora"}) {
    const fs::path out = s.work / (std::string(kind) + ".gguf");
    pipelines::export_gguf_lora(fixture("llama3"), s.work / kind, out, "f32");
    ordered_json c{{"gguf", out.string()}, {"adapter", (s.work / kind).string()}, {"model_dir", fixture("llama3").string()}};
    if (std::string(kind) == "lora")  // the merged model is PEFT's merge of this adapter
      c.update({{"base_gguf", gguf_path("llama3", "f32").string()}, {"merged_gguf", gguf_path("merged", "f32").string()}});
    lora.push_back(c);
  }

  ordered_json res = llmtune::testing::run_json_script(kScript, {{"phase", "verify"}, {"files", files}, {"transformers", hf}, {"lora", lora}});
  for (const auto& e : res["errors"]) ADD_FAILURE() << e.get<std::string>();
}

TEST(GgufExport, LoadGgufModelGivesTheTransformersLogits) {
  // F32 files: logits as transformers computes them on the HF directory.
  for (const auto& m : kFixtures) {
    const fs::path p = gguf_path(m, "f32");
    if (!fs::exists(p)) export_dir(fixture(m), p, "f32");
    at::Tensor ours = gguf_logits(p, m), ref = ref_logits(m);
    // GGUF's llama and qwen3 architectures have no sliding window (the export warns): the mistral
    // and qwen3 fixtures (window 8) agree on the positions the window does not cut.
    if (m == "mistral" || m == "qwen3") ours = ours.slice(0, 0, 8), ref = ref.slice(0, 0, 8);
    EXPECT_LE(llmtune::testing::max_abs_diff(ours, ref), 1e-5) << m;
  }
  // F16 / Q8_0: the same greedy token at every position of the probe.
  for (const auto& [m, type] : std::vector<std::pair<std::string, std::string>>{{"tinyllama", "f16"}, {"tinyllama", "q8_0"}}) {
    const fs::path p = gguf_path(m, type);
    if (!fs::exists(p)) export_dir(fixture(m), p, type);
    EXPECT_TRUE(at::equal(gguf_logits(p, m).argmax(-1), ref_logits(m).argmax(-1))) << m << " " << type;
  }
  // A file written by gguf-py the way llama.cpp's converter writes it (F16 matrices).
  at::Tensor l = gguf_logits(shared().work / "gguf_py.gguf", "tinyllama");
  EXPECT_TRUE(at::equal(l.argmax(-1), ref_logits("tinyllama").argmax(-1)));
  EXPECT_LE(llmtune::testing::max_abs_diff(l, ref_logits("tinyllama")), 0.05);
}

TEST(GgufExportErrors, BadInputsAreNamed) {
  const fs::path work = shared().work / "errors";
  fs::create_directories(work);
  // A model type llmtune does not know.
  fs::create_directories(work / "bloom");
  std::ofstream(work / "bloom" / "config.json") << R"({"model_type": "bloom", "vocab_size": 8, "hidden_size": 8})";
  EXPECT_THROW(export_dir(work / "bloom", work / "bloom.gguf", "f16"), ModelLoadError);
  // A GGUF without llama.embedding_length.
  {
    io::GgufWriter w(work / "nokey.gguf");
    w.add_string("general.architecture", "llama");
    w.add_u32("llama.block_count", 2);
    w.commit();
  }
  try {
    pipelines::load_gguf_model(work / "nokey.gguf", c10::kCPU, at::kFloat);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("llama.embedding_length"), std::string::npos) << e.what();
  }
  // A GGUF of an architecture we do not load (test_gguf_families.cpp checks the message).
  {
    io::GgufWriter w(work / "phi2.gguf");
    w.add_string("general.architecture", "phi2");
    w.commit();
  }
  EXPECT_THROW(pipelines::load_gguf_model(work / "phi2.gguf", c10::kCPU, at::kFloat), ModelLoadError);
  // DoRA has no llama.cpp counterpart.
  EXPECT_THROW(pipelines::export_gguf_lora(fixture("llama3"), shared().work / "dora", work / "dora.gguf", "f32"), AdapterError);
  EXPECT_FALSE(fs::exists(work / "dora.gguf"));
}
