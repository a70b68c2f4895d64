// bitsandbytes checkpoints against transformers + bitsandbytes (CPU, fp32 compute): directories
// transformers saved with BitsAndBytesConfig load here with its logits; directories written with
// bnb_module_tensors load there with ours; damaged checkpoints fail with one-line errors.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/tensor.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/quant/bnb_linear.h"
#include "llmtune/quant/int8_linear.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::call_python;

const std::string kModels = std::string(LLMTUNE_FIXTURES_DIR) + "/models/";
const c10::Device kCpu(c10::kCPU);

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("llmtune-bnb-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

at::Tensor ids() { return at::arange(1, 25, at::kLong).view({2, 12}); }

model::CausalLM load_bnb(const fs::path& dir) {
  const std::optional<BnbConfig> config = read_bnb_config(dir);
  if (!config) throw std::runtime_error(dir.string() + " has no quantization_config");
  return model::CausalLM::load(dir, kCpu, at::kFloat, bnb_checkpoint_linear_factory(*config, io::WeightFiles::open(dir), dir, kCpu));
}

// max |a - b| relative to max |b|: the "≤ 1e-4 relative" for logits.
double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return testing::max_abs_diff(a, b) / b.abs().max().item<double>();
}

struct Case {
  std::string name, src;
  json config;  // BitsAndBytesConfig kwargs
  bool four_bit;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> c{
      {"nf4", "llama-linear", {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_compute_dtype", "float32"}}, true},
      {"nf4_dq", "llama-linear",
       {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_use_double_quant", true}, {"bnb_4bit_compute_dtype", "float32"}},
       true},
      {"fp4", "llama-linear", {{"load_in_4bit", true}}, true},
      {"nf4_bf16_storage", "llama-linear",
       {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_quant_storage", "bfloat16"}, {"bnb_4bit_compute_dtype", "float32"}},
       true},
      {"nf4_skip", "llama-linear",
       {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"}, {"llm_int8_skip_modules", {"lm_head", "mlp.down_proj"}}},
       true},
      {"qwen2_nf4_dq", "qwen2", {{"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"}, {"bnb_4bit_use_double_quant", true}}, true},
      {"int8", "llama-linear", {{"load_in_8bit", true}}, false},
      {"int8_skip", "llama-linear", {{"load_in_8bit", true}, {"llm_int8_skip_modules", {"lm_head", "model.layers.1", "o_proj"}}}, false},
  };
  return c;
}

// Directories transformers saved (one Python run for every case) and its logits on each:
// [eval-mode, train-mode] per case.
struct Saved {
  fs::path root;
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> logits;
  ~Saved() {
    std::error_code ignored;
    if (!root.empty()) fs::remove_all(root, ignored);
  }
};

const Saved& saved() {
  static const Saved s = [] {
    Saved out;
    out.root = fresh_dir("saved");
    for (const std::string src : {"llama-linear", "qwen2"}) {
      json list = json::array();
      std::vector<std::string> names;
      for (const Case& c : cases())
        if (c.src == src) {
          list.push_back({{"name", c.name}, {"config", c.config}});
          names.push_back(c.name);
        }
      auto r = call_python("bnb_save_quantized", {ids()}, {{"src_dir", kModels + src}, {"out_dir", out.root.string()}, {"cases", list}});
      for (size_t i = 0; i < names.size(); ++i) out.logits[names[i]] = {r[2 * i], r[2 * i + 1]};
    }
    return out;
  }();
  return s;
}

int count_quantized(model::CausalLM& m) {
  int n = 0;
  for (const auto& [path, slot] : m.named_linears())
    n += dynamic_cast<const FourBitLinear*>(slot->get()) || dynamic_cast<const Int8Linear*>(slot->get());
  return n;
}

TEST(BnbCheckpoint, DirectoriesSavedByTransformersLoadWithItsLogits) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const fs::path dir = saved().root / c.name;
    const auto& [ref_eval, ref_train] = saved().logits.at(c.name);
    model::CausalLM m = load_bnb(dir);
    const io::WeightFiles files = io::WeightFiles::open(dir);
    int stored_quantized = 0;
    for (const auto& [path, slot] : m.named_linears()) stored_quantized += is_bnb_quantized_module(files, path);
    EXPECT_GT(stored_quantized, 0);
    EXPECT_EQ(count_quantized(m), stored_quantized);
    at::Tensor ours_eval;
    {
      at::NoGradGuard no_grad;
      ours_eval = m.forward(ids());
    }
    const at::Tensor ours_train = m.forward(ids()).detach();
    // 4-bit: one product (dequantize, multiply) = bitsandbytes' training path (its no-grad CPU
    // kernel computes other numbers, see reference.py). 8-bit: LLM.int8 without grad (eval),
    // dequantize + multiply with grad on the CPU (train), each against the same mode.
    const at::Tensor& ref_for_eval = c.four_bit ? ref_train : ref_eval;
    EXPECT_LE(rel_diff(ours_eval, ref_for_eval), 1e-4);
    EXPECT_LE(rel_diff(ours_train, ref_train), 1e-4);
  }
  // The skip lists left whole modules dense in the file, and dense here.
  model::CausalLM skip = load_bnb(saved().root / "int8_skip");
  EXPECT_EQ(count_quantized(skip), 6);  // layer 0 but its o_proj; layer 1 and lm_head dense
  EXPECT_NE(dynamic_cast<const model::DenseLinear*>(skip.linear("model.layers.1.mlp.up_proj").get()), nullptr);
}

// Our quantization of the same fp32 weights, written with bnb_module_tensors, against what
// transformers saved: the same keys and dtypes; the same bytes where bitsandbytes is deterministic
// on the CPU (NF4 without double quant, int8, the quant_state JSON).
TEST(BnbCheckpoint, ModuleTensorsEqualWhatTransformersSaves) {
  const io::WeightFiles src = io::WeightFiles::open(kModels + "llama-linear");
  const std::string module = "model.layers.0.mlp.up_proj";
  const at::Tensor w = src.tensor(module + ".weight");
  struct Want {
    std::string name;
    std::vector<std::pair<std::string, at::Tensor>> ours;
    bool exact;
  };
  const std::vector<Want> wants{
      {"nf4", bnb_module_tensors(module, quantize_4bit(w, FourBit::NF4, 64, false)), true},
      {"nf4_dq", bnb_module_tensors(module, quantize_4bit(w, FourBit::NF4, 64, true)), false},
      {"fp4", bnb_module_tensors(module, quantize_4bit(w, FourBit::FP4, 64, false)), false},
      {"nf4_bf16_storage", bnb_module_tensors(module, quantize_4bit(w, FourBit::NF4, 64, false), "bfloat16"), true},
      {"int8", bnb_module_tensors(module, quantize_int8(w.to(at::kHalf))), true},
  };
  for (const Want& want : wants) {
    SCOPED_TRACE(want.name);
    const io::WeightFiles theirs = io::WeightFiles::open(saved().root / want.name);
    std::vector<std::string> their_keys;
    for (const auto& n : theirs.names())
      if (n.starts_with(module + ".") && n != module + ".bias") their_keys.push_back(n);
    std::vector<std::string> our_keys;
    for (const auto& [k, t] : want.ours) our_keys.push_back(k);
    std::sort(our_keys.begin(), our_keys.end());
    EXPECT_EQ(our_keys, their_keys);
    for (const auto& [k, t] : want.ours) {
      if (!theirs.contains(k)) continue;
      const at::Tensor ref = theirs.tensor(k);
      EXPECT_EQ(t.scalar_type(), ref.scalar_type()) << k;
      EXPECT_EQ(t.sizes(), ref.sizes()) << k;
      const bool json_state = k.find(".quant_state.") != std::string::npos;
      // Bytes, not values: packed codes stored as bfloat16 include NaN patterns.
      const auto same_bytes = [](const at::Tensor& a, const at::Tensor& b) {
        return a.sizes() == b.sizes() && at::equal(a.contiguous().view(at::kByte), b.contiguous().view(at::kByte));
      };
      if (want.exact || k.ends_with("quant_map")) EXPECT_TRUE(same_bytes(t, ref)) << k;
      if (json_state && want.name != "nf4_dq") EXPECT_TRUE(same_bytes(t, ref)) << k;
    }
  }
}

// A directory written from our quantized model: safetensors + config.json's quantization_config.
void write_quantized_dir(const fs::path& src, const fs::path& dst, model::CausalLM& m, const BnbConfig& config) {
  const io::WeightFiles files = io::WeightFiles::open(src);
  std::map<std::string, const model::Linear*> linears;
  for (const auto& [path, slot] : m.named_linears()) linears[path] = slot->get();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : files.names()) {
    if (name.ends_with(".weight")) {
      const std::string module = name.substr(0, name.size() - 7);
      const auto it = linears.find(module);
      if (it != linears.end()) {
        if (const auto* f = dynamic_cast<const FourBitLinear*>(it->second)) {
          for (auto& kt : bnb_module_tensors(module, f->quantized(), config.quant_storage)) tensors.push_back(kt);
          continue;
        }
        if (const auto* q = dynamic_cast<const Int8Linear*>(it->second)) {
          for (auto& kt : bnb_module_tensors(module, q->quantized())) tensors.push_back(kt);
          continue;
        }
      }
    }
    tensors.emplace_back(name, files.tensor(name));
  }
  io::save_safetensors(dst / "model.safetensors", tensors, {{"format", "pt"}});
  std::ifstream in(src / "config.json");
  json cfg = json::parse(in);
  cfg["quantization_config"] = json::parse(bnb_config_json(config));
  std::ofstream(dst / "config.json") << cfg.dump(2);
}

TEST(BnbCheckpoint, DirectoriesWrittenHereLoadInTransformersWithOurLogits) {
  const fs::path src = kModels + "llama-linear";
  struct W {
    std::string name;
    BnbConfig config;
  };
  std::vector<W> ws;
  for (auto [name, type, dq, storage] : std::vector<std::tuple<std::string, FourBit, bool, std::string>>{
           {"w_nf4", FourBit::NF4, false, "uint8"}, {"w_nf4_dq", FourBit::NF4, true, "uint8"},
           {"w_fp4", FourBit::FP4, false, "uint8"}, {"w_nf4_bf16", FourBit::NF4, false, "bfloat16"}}) {
    BnbConfig c;
    c.load_in_4bit = true;
    c.type = type;
    c.double_quant = dq;
    c.quant_storage = storage;
    ws.push_back({name, c});
  }
  BnbConfig int8;
  int8.load_in_8bit = true;
  ws.push_back({"w_int8", int8});
  std::vector<model::CausalLM> models;
  json dirs = json::array();
  for (const W& w : ws) {
    FourBitOptions options;
    options.type = w.config.type;
    options.double_quant = w.config.double_quant;
    models.push_back(model::CausalLM::load(src, kCpu, at::kFloat,
                                           w.config.load_in_4bit ? four_bit_linear_factory(options) : int8_linear_factory()));
    const fs::path dir = fresh_dir(w.name);
    write_quantized_dir(src, dir, models.back(), w.config);
    dirs.push_back(dir.string());
  }
  const auto ref = call_python("bnb_load_logits", {ids()}, {{"model_dirs", dirs}});
  for (size_t i = 0; i < ws.size(); ++i) {
    SCOPED_TRACE(ws[i].name);
    model::CausalLM& m = models[i];
    const at::Tensor& ref_eval = ref[2 * i];
    const at::Tensor& ref_train = ref[2 * i + 1];
    at::Tensor ours_eval;
    {
      at::NoGradGuard no_grad;
      ours_eval = m.forward(ids());
    }
    EXPECT_LE(rel_diff(ours_eval, ws[i].config.load_in_4bit ? ref_train : ref_eval), 1e-4);
    EXPECT_LE(rel_diff(m.forward(ids()).detach(), ref_train), 1e-4);
    // And it loads back here, to the same logits.
    at::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(load_bnb(dirs[i].get<std::string>()).forward(ids()), ours_eval));
    fs::remove_all(dirs[i].get<std::string>());
  }
}

// A copy of a saved directory whose tensors `edit` may change, drop or add.
using Edit = std::function<void(std::map<std::string, at::Tensor>&)>;
fs::path damaged(const std::string& from, const std::string& name, const Edit& edit, const std::function<void(json&)>& edit_config = {}) {
  const fs::path src = saved().root / from, dst = fresh_dir(name);
  const io::WeightFiles files = io::WeightFiles::open(src);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& n : files.names()) tensors[n] = files.tensor(n).clone();
  edit(tensors);
  io::save_safetensors(dst / "model.safetensors", {tensors.begin(), tensors.end()});
  std::ifstream in(src / "config.json");
  json cfg = json::parse(in);
  if (edit_config) edit_config(cfg);
  std::ofstream(dst / "config.json") << cfg.dump(2);
  return dst;
}

at::Tensor json_bytes(const std::string& text) {
  std::vector<uint8_t> b(text.begin(), text.end());
  return at::tensor(at::ArrayRef<uint8_t>(b), at::kByte);
}

std::string load_error(const fs::path& dir) {
  try {
    load_bnb(dir);
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    return e.what();
  }
  return "(loaded)";
}

TEST(BnbCheckpoint, DamagedCheckpointsFailWithOneLineErrors) {
  const std::string m = "model.layers.0.self_attn.q_proj.weight";
  const std::string qs = m + ".quant_state.bitsandbytes__nf4";
  auto state = [&](const json& j) { return [&, text = j.dump()](std::map<std::string, at::Tensor>& t) { t[qs] = json_bytes(text); }; };
  const json good{{"quant_type", "nf4"}, {"blocksize", 64}, {"dtype", "float32"}, {"shape", {64, 64}}};
  auto with = [&](const char* key, const json& value) {
    json j = good;
    j[key] = value;
    return state(j);
  };
  struct Bad {
    std::string name;
    Edit edit;
    std::string expect;
  };
  const std::vector<Bad> bads{
      {"no_state", [&](auto& t) { t.erase(qs); }, "has no 'model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4'"},
      {"blocksize", with("blocksize", 48), "blocksize 48"},
      {"blocksize_big", with("blocksize", 8192), "blocksize 8192"},
      {"shape", with("shape", {64, 32}), "needs 1024"},
      {"type", with("quant_type", "int4"), "unknown quant_type 'int4'"},
      {"type_key", [&](auto& t) { t[m + ".quant_state.bitsandbytes__int4"] = t.at(qs); t.erase(qs); }, "unknown 4-bit quant_type"},
      {"absmax", [&](auto& t) { t[m + ".absmax"] = t.at(m + ".absmax").narrow(0, 0, 10).clone(); }, "needs 64 values"},
      {"no_absmax", [&](auto& t) { t.erase(m + ".absmax"); }, "has no 'model.layers.0.self_attn.q_proj.weight.absmax'"},
      {"json", [&](auto& t) { t[qs] = json_bytes("{\"quant_type\": "); }, "is not a JSON object"},
      {"quant_map", [&](auto& t) { t[m + ".quant_map"] = t.at(m + ".quant_map") * 2; }, "custom 4-bit codes"},
  };
  for (const Bad& b : bads) {
    SCOPED_TRACE(b.name);
    const fs::path dir = damaged("nf4", b.name, b.edit);
    const std::string e = load_error(dir);
    EXPECT_NE(e.find(b.expect), std::string::npos) << e;
    EXPECT_NE(e.find(dir.string()), std::string::npos) << e;
    fs::remove_all(dir);
  }
  // 8-bit: SCB missing or of the wrong length.
  const std::string q8 = "model.layers.0.self_attn.q_proj";
  for (auto [name, edit, expect] : std::vector<std::tuple<std::string, Edit, std::string>>{
           {"no_scb", [&](auto& t) { t.erase(q8 + ".SCB"); }, "has no 'model.layers.0.self_attn.q_proj.SCB'"},
           {"scb_len", [&](auto& t) { t[q8 + ".SCB"] = t.at(q8 + ".SCB").narrow(0, 0, 3).clone(); }, "one absmax per row"}}) {
    SCOPED_TRACE(name);
    const fs::path dir = damaged("int8", name, edit);
    EXPECT_NE(load_error(dir).find(expect), std::string::npos) << load_error(dir);
    fs::remove_all(dir);
  }
}

TEST(BnbCheckpoint, QuantizationConfigErrorsNameTheKey) {
  const auto with = [](const std::string& name, const std::function<void(json&)>& f) {
    return damaged("nf4", name, [](auto&) {}, f);
  };
  const std::vector<std::pair<fs::path, std::string>> bads{
      {with("awq", [](json& c) { c["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}}; }),
       "quantization_config.quant_method 'awq' is not supported yet"},
      {with("both", [](json& c) { c["quantization_config"]["load_in_8bit"] = true; }), "exactly one of load_in_4bit and load_in_8bit"},
      {with("qtype", [](json& c) { c["quantization_config"]["bnb_4bit_quant_type"] = "int4"; }), "bnb_4bit_quant_type 'int4'"},
      {with("storage", [](json& c) { c["quantization_config"]["bnb_4bit_quant_storage"] = "complex64"; }), "bnb_4bit_quant_storage"},
      {with("skip", [](json& c) { c["quantization_config"]["llm_int8_skip_modules"] = "lm_head"; }), "llm_int8_skip_modules must be"},
  };
  for (const auto& [dir, expect] : bads) {
    SCOPED_TRACE(dir.string());
    try {
      read_bnb_config(dir);
      ADD_FAILURE() << "no error";
    } catch (const QuantError& e) {
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    }
    fs::remove_all(dir);
  }
  EXPECT_FALSE(read_bnb_config(kModels + "llama-linear").has_value());
  const BnbConfig c = *read_bnb_config(saved().root / "nf4_dq");
  EXPECT_TRUE(c.load_in_4bit && c.double_quant && c.type == FourBit::NF4);
  EXPECT_EQ(read_bnb_config(saved().root / "int8_skip")->skip_modules, (std::vector<std::string>{"lm_head", "model.layers.1", "o_proj"}));
  // A dense factory refuses packed weights with a pointer to the quantization_config.
  try {
    model::CausalLM::load(saved().root / "int8", kCpu, at::kFloat);
    ADD_FAILURE() << "no error";
  } catch (const ModelLoadError& e) {
    EXPECT_NE(std::string(e.what()).find("stored quantized"), std::string::npos) << e.what();
  }
}

// Int8Linear against bitsandbytes' Linear8bitLt on activations with outliers (|x| ≥ 6 in a few
// columns, so LLM.int8 splits them off): the quantized weight, the no-grad (eval) output, and the
// CPU training output and input gradient.
TEST(BnbCheckpoint, Int8LinearEqualsLinear8bitLt) {
  at::manual_seed(3);
  for (int64_t rows : {1, 7}) {
    SCOPED_TRACE(rows);
    const at::Tensor w = at::randn({48, 96}) * 0.05, b = at::randn({48}) * 0.1;
    at::Tensor x = at::randn({rows, 96});
    x.select(1, 5).mul_(9);
    x.select(1, 40).fill_(-7.5);
    const auto ref = call_python("bnb_linear8bit", {x, w, b}, {{"threshold", 6.0}});
    Int8Linear layer(quantize_int8(w.to(at::kHalf)), b, 6.0);
    EXPECT_TRUE(at::equal(layer.quantized().weight, ref[0]));
    EXPECT_TRUE(at::equal(layer.quantized().scb, ref[1]));
    {
      at::NoGradGuard no_grad;
      EXPECT_LE(rel_diff(layer.forward(x), ref[2]), 1e-6);
    }
    const at::Tensor xg = x.clone().requires_grad_(true);
    const at::Tensor y = layer.forward(xg);
    y.sum().backward();
    EXPECT_LE(rel_diff(y.detach(), ref[3]), 1e-6);
    EXPECT_LE(rel_diff(xg.grad(), ref[4]), 1e-6);
    // Without the decomposition the outliers squash every other column: a different result.
    at::NoGradGuard no_grad;
    EXPECT_GT(rel_diff(int8_mixed_matmul(x, layer.quantized(), b, 0.0), ref[2]), 1e-3);
  }
}

TEST(BnbCheckpoint, DequantizedModuleEqualsTheLoadedLinear) {
  for (const std::string name : {"nf4_dq", "int8"}) {
    const fs::path dir = saved().root / name;
    const io::WeightFiles files = io::WeightFiles::open(dir);
    model::CausalLM m = load_bnb(dir);
    const std::string module = "model.layers.1.mlp.down_proj";
    ASSERT_TRUE(is_bnb_quantized_module(files, module));
    EXPECT_FALSE(is_bnb_quantized_module(files, "lm_head"));
    const at::Tensor w = dequantize_bnb_module(files, module, at::kFloat);
    EXPECT_EQ(w.sizes(), (std::vector<int64_t>{64, 128}));
    EXPECT_TRUE(at::equal(w, m.linear(module)->dense_weight().to(at::kFloat))) << name;
  }
}

}  // namespace
}  // namespace llmtune::quant
