// Families registered only through a description, here in the test: a llama with every tensor
// renamed, and a llama whose q/k/v and gate/up projections are fused (Phi-3's layout). Each loads
// from its own checkpoint (the llama-linear fixture rewritten), gives transformers' logits for the
// original, trains with LoRA exactly as llama does (a fused LoRA as PEFT applies it: one A, B over
// the concatenated outputs), and the renamed one exports to a GGUF that loads back as llama.
#include <ATen/ops/cat.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/model/family.h"
#include "llmtune/peft/lora.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/train/loss.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::model {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

// The test families: descriptions only, registered at run time.
FamilyDesc renamed_family() {
  FamilyDesc f = llama_layout("llmtune_test_renamed");
  f.layers_prefix = "transformer.h.";
  f.embed = "transformer.wte";
  f.final_norm = "transformer.ln_f";
  f.lm_head = "head";
  f.norms = {{NormRole::Input, "ln_attn", "attn_norm"}, {NormRole::PostAttention, "ln_mlp", "ffn_norm"}};
  f.linears = {{"attn.wq", "attn_q", {Proj::Q}},     {"attn.wk", "attn_k", {Proj::K}},
               {"attn.wv", "attn_v", {Proj::V}},     {"attn.wo", "attn_output", {Proj::O}},
               {"ffn.w1", "ffn_gate", {Proj::Gate}}, {"ffn.w3", "ffn_up", {Proj::Up}},
               {"ffn.w2", "ffn_down", {Proj::Down}}};
  f.gguf.loads_arch = false;  // its GGUF is a plain llama file
  return f;
}

FamilyDesc fused_family() {
  FamilyDesc f = llama_layout("llmtune_test_fused");
  f.linears = {{"self_attn.qkv_proj", "attn_qkv", {Proj::Q, Proj::K, Proj::V}},
               {"self_attn.o_proj", "attn_output", {Proj::O}},
               {"mlp.gate_up_proj", "ffn_up", {Proj::Gate, Proj::Up}},
               {"mlp.down_proj", "ffn_down", {Proj::Down}}};
  f.gguf = {};  // no GGUF form
  return f;
}

// Writes `family`'s checkpoint of the llama model `src`: every tensor renamed, fused ones
// concatenated from llama's parts; config.json and the tokenizer files copied.
fs::path rewrite_checkpoint(const fs::path& src, const FamilyDesc& family, const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("llmtune-family-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  CausalLM llama = CausalLM::load(src, c10::kCPU, at::kFloat);
  std::map<std::string, at::Tensor> by_name;
  for (auto& [n, t] : llama.named_weights()) by_name[n] = *t;
  const FamilyDesc& l = llama.family();
  const ModelConfig& c = llama.config();
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.emplace_back(family.embed + ".weight", by_name.at(l.embed + ".weight"));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string lp = l.layers_prefix + std::to_string(i) + ".", fp = family.layers_prefix + std::to_string(i) + ".";
    for (size_t k = 0; k < family.norms.size(); ++k)
      out.emplace_back(fp + family.norms[k].name + ".weight", by_name.at(lp + l.norms[k].name + ".weight"));
    for (const auto& d : family.linears) {
      for (const char* suffix : {".weight", ".bias"}) {
        std::vector<at::Tensor> parts;
        for (Proj p : d.parts) {
          const auto& ld = *std::find_if(l.linears.begin(), l.linears.end(), [&](const LinearDesc& x) { return x.parts[0] == p; });
          auto it = by_name.find(lp + ld.name + suffix);
          if (it != by_name.end()) parts.push_back(it->second);
        }
        if (!parts.empty()) out.emplace_back(fp + d.name + suffix, at::cat(parts, 0).contiguous());
      }
    }
  }
  out.emplace_back(family.final_norm + ".weight", by_name.at(l.final_norm + ".weight"));
  out.emplace_back(family.lm_head + ".weight", by_name.at(l.lm_head + ".weight"));
  io::save_safetensors(dir / "model.safetensors", out, {{"format", "pt"}});
  std::ifstream in(src / "config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["model_type"] = family.model_type;
  std::ofstream(dir / "config.json") << config.dump(2);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    if (fs::exists(src / f)) fs::copy_file(src / f, dir / f);
  return dir;
}

class FamilyDescription : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    register_family(renamed_family());
    register_family(fused_family());
    renamed_dir_ = rewrite_checkpoint(fixture("llama-linear"), *find_family("llmtune_test_renamed"), "renamed");
    fused_dir_ = rewrite_checkpoint(fixture("llama-linear"), *find_family("llmtune_test_fused"), "fused");
  }
  static void TearDownTestSuite() {
    fs::remove_all(renamed_dir_);
    fs::remove_all(fused_dir_);
  }
  static inline fs::path renamed_dir_, fused_dir_;
};

TEST_F(FamilyDescription, LoadsAndEqualsTransformersOnTheOriginal) {
  at::manual_seed(3);
  at::Tensor ids = at::randint(0, 100, {2, 16}, at::TensorOptions().dtype(at::kLong));
  at::Tensor ref = testing::call_python("causal_lm_logits", {ids}, {{"model_dir", fixture("llama-linear").string()}})[0];
  for (const fs::path& dir : {renamed_dir_, fused_dir_}) {
    CausalLM m = CausalLM::load(dir, c10::kCPU, at::kFloat);
    at::Tensor ours = m.forward(ids);
    ASSERT_EQ(ours.sizes(), ref.sizes());
    EXPECT_LE(testing::max_abs_diff(ours, ref), 1e-4 * ref.abs().max().item<double>()) << dir;
  }
  // The derived name lists: named_linears and named_weights speak the family's names.
  CausalLM fused = CausalLM::load(fused_dir_, c10::kCPU, at::kFloat);
  std::vector<std::string> linears;
  for (auto& [name, slot] : fused.named_linears()) linears.push_back(name);
  EXPECT_EQ(linears.front(), "model.layers.0.self_attn.qkv_proj");
  EXPECT_EQ(fused.linear("model.layers.1.mlp.gate_up_proj")->out_features(), 2 * 128);
  CausalLM renamed = CausalLM::load(renamed_dir_, c10::kCPU, at::kFloat);
  EXPECT_EQ(renamed.named_weights().front().first, "transformer.wte.weight");
  EXPECT_THROW(renamed.linear("model.layers.0.self_attn.q_proj"), ModelLoadError);
}

// LoRA with the same initial tensors on the renamed family and on llama: identical losses over a
// few SGD steps (llama's LoRA is PEFT's, tested in tests/peft). The saved adapter uses the
// family's module paths and loads back onto a fresh model of the family.
TEST_F(FamilyDescription, TrainsWithLoraExactlyAsLlama) {
  at::manual_seed(4);
  at::Tensor ids = at::randint(0, 100, {2, 12}, at::TensorOptions().dtype(at::kLong));
  auto train = [&](const fs::path& dir, const std::vector<std::string>& targets, std::vector<peft::NamedTensor>* out) {
    CausalLM m = CausalLM::load(dir, c10::kCPU, at::kFloat);
    peft::LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.target_modules = targets;
    cfg.init_lora_weights = "false";  // B random too: the adapter changes the output from step 0
    at::manual_seed(11);
    auto params = peft::inject_lora(m, cfg);
    std::vector<double> losses;
    for (int step = 0; step < 3; ++step) {
      at::Tensor loss = train::causal_lm_loss(m.forward(ids), ids);
      loss.backward();
      losses.push_back(loss.item<double>());
      at::NoGradGuard no_grad;
      for (auto& p : params) {
        p.tensor.sub_(p.tensor.grad() * 0.5);
        p.tensor.mutable_grad().zero_();
      }
    }
    if (out) *out = params;
    return losses;
  };
  std::vector<peft::NamedTensor> trained;
  auto ours = train(renamed_dir_, {"wq", "wv", "w2"}, &trained);
  auto llama = train(fixture("llama-linear"), {"q_proj", "v_proj", "down_proj"}, nullptr);
  ASSERT_EQ(ours.size(), llama.size());
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_NEAR(ours[i], llama[i], 1e-5 * std::abs(llama[i])) << "step " << i;
  EXPECT_LT(ours.back(), ours.front());
  EXPECT_EQ(trained.front().name, "base_model.model.transformer.h.0.attn.wq.lora_A.weight");

  const fs::path adapter = renamed_dir_ / "adapter";
  peft::LoraConfig cfg;
  cfg.r = 4;
  cfg.lora_alpha = 8;
  cfg.target_modules = {"wq", "wv", "w2"};
  peft::save_adapter(adapter, cfg, trained);
  CausalLM a = CausalLM::load(renamed_dir_, c10::kCPU, at::kFloat);
  peft::inject_lora(a, cfg);
  CausalLM b = CausalLM::load(renamed_dir_, c10::kCPU, at::kFloat);
  EXPECT_EQ(peft::apply_adapter(b, adapter), 6);
  at::NoGradGuard no_grad;
  // b carries the trained tensors; a has fresh ones (B = 0) and equals the base.
  CausalLM base = CausalLM::load(renamed_dir_, c10::kCPU, at::kFloat);
  EXPECT_EQ(testing::max_abs_diff(a.forward(ids), base.forward(ids)), 0.0);
  EXPECT_GT(testing::max_abs_diff(b.forward(ids), base.forward(ids)), 1e-3);
}

// A LoRA on a fused qkv_proj is one adapter over the concatenated output (PEFT's behaviour on
// Phi-3): equal to LoRAs on llama's q, k and v sharing A, with B split by rows.
TEST_F(FamilyDescription, LoraOnAFusedProjectionIsOneAdapterOverTheConcatenation) {
  at::manual_seed(5);
  at::Tensor ids = at::randint(0, 100, {1, 10}, at::TensorOptions().dtype(at::kLong));
  CausalLM fused = CausalLM::load(fused_dir_, c10::kCPU, at::kFloat);
  CausalLM llama = CausalLM::load(fixture("llama-linear"), c10::kCPU, at::kFloat);
  const ModelConfig& c = llama.config();
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_heads_kv * c.head_dim, r = 3;
  at::Tensor a = at::randn({r, c.hidden_size}), b = at::randn({q + 2 * kv, r}) * 0.1;
  LinearPtr& slot = fused.linear("model.layers.0.self_attn.qkv_proj");
  slot = std::make_shared<peft::LoraLinear>(slot, a, b, 2.0);
  int64_t row = 0;
  for (auto [name, n] : {std::pair{"q_proj", q}, {"k_proj", kv}, {"v_proj", kv}}) {
    LinearPtr& s = llama.linear(std::string("model.layers.0.self_attn.") + name);
    s = std::make_shared<peft::LoraLinear>(s, a, b.narrow(0, row, n), 2.0);
    row += n;
  }
  at::NoGradGuard no_grad;
  at::Tensor x = fused.forward(ids), y = llama.forward(ids);
  EXPECT_LE(testing::max_abs_diff(x, y), 1e-5 * y.abs().max().item<double>());
}

// The renamed family exports a llama GGUF from its own names (the description's GGUF names and
// q/k permutation), which loads back as llama with the same logits.
TEST_F(FamilyDescription, ExportsToGgufThatLoadsAsLlama) {
  auto file = io::SafetensorsFile::open(renamed_dir_ / "model.safetensors");
  const fs::path out = renamed_dir_ / "model.gguf";
  pipelines::GgufExportOptions options;
  options.type = "f32";
  pipelines::export_gguf(renamed_dir_, file->names(), [&](const std::string& n) { return file->tensor(n); }, out, options);
  pipelines::GgufModel g = pipelines::load_gguf_model(out, c10::kCPU, at::kFloat);
  EXPECT_EQ(g.model->config().model_type, "llama");
  CausalLM renamed = CausalLM::load(renamed_dir_, c10::kCPU, at::kFloat);
  at::manual_seed(6);
  at::Tensor ids = at::randint(0, 100, {1, 12}, at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  at::Tensor ref = renamed.forward(ids);
  EXPECT_LE(testing::max_abs_diff(g.model->forward(ids), ref), 1e-5 * ref.abs().max().item<double>());
}

}  // namespace
}  // namespace llmtune::model
