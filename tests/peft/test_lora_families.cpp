// LoRA / rsLoRA / DoRA and full fine-tuning on the families beyond Llama 2 (Qwen3, Gemma 2/3,
// Phi-3/4, GPT-2, SmolLM) against PEFT + transformers on the fixture models: loss and gradients,
// PEFT's targets and DoRA magnitudes on fused projections (qkv_proj, gate_up_proj, c_attn) and on
// GPT-2's Conv1D (fan_in_fan_out), adapters saved by either side loaded by the other, and merged
// directories that transformers loads with base+adapter logits.
#include <ATen/core/Reduction.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn_like.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/lora.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/util/error.h"
#include "support/interop.h"
#include "support/lora_parity.h"

namespace llmtune::peft {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("llmtune-lora-families-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

struct Case {
  std::string model, kind, targets;
  std::string label() const { return model + " " + kind + " " + targets; }
};

// targets: "all-linear" or "name,name"; fan_in_fan_out as PEFT sets it for the model's layers.
LoraConfig make_config(const Case& c, const model::CausalLM& m) {
  LoraConfig config;
  config.r = 4;
  config.lora_alpha = 8;
  config.use_rslora = c.kind == "rslora";
  config.use_dora = c.kind == "dora";
  config.fan_in_fan_out = m.family().conv1d;
  if (c.targets == "all-linear") {
    config.target_regex = c.targets;
  } else {
    std::stringstream ss(c.targets);
    for (std::string name; std::getline(ss, name, ',');) config.target_modules.push_back(name);
  }
  return config;
}

using testing::causal_lm_loss;
using testing::perturb;
using testing::rel_err;

// 20 tokens: past the fixtures' sliding windows of 8; ids below every fixture's vocabulary.
struct Batch {
  at::Tensor ids, labels;
};
Batch make_batch() {
  at::manual_seed(5);
  at::Tensor ids = at::randint(0, 1500, {2, 20}, at::TensorOptions().dtype(at::kLong));
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 4).select(0, 0).fill_(-100);
  labels.narrow(1, 15, 5).select(0, 1).fill_(-100);
  return {ids, labels};
}

std::vector<std::string> decode_names(const at::Tensor& t) {
  std::string s(static_cast<const char*>(t.const_data_ptr()), t.numel());
  std::vector<std::string> names;
  std::stringstream ss(s);
  for (std::string line; std::getline(ss, line, '\n');) names.push_back(line);
  return names;
}

void expect_close(const at::Tensor& ours, const at::Tensor& ref, double tol, const std::string& what) {
  const double scale = ref.abs().max().item<double>(), diff = testing::max_abs_diff(ours, ref);
  EXPECT_LE(diff, tol * scale) << what;
  std::cout << "[ measured ] " << what << ": max |diff| / max = " << diff / scale << "\n";
}

// 1. Loss and every adapter gradient equal PEFT's in fp32: the fused projections adapted whole
// (Phi-3's qkv_proj / gate_up_proj, GPT-2's c_attn), GPT-2's Conv1D with fan_in_fan_out, Gemma 2's
// soft-caps, per-head q/k norms (Qwen3, Gemma 3), longrope (Phi-4-mini), DoRA on each.
TEST(LoraFamilies, LossAndGradientsEqualPeft) {
  const std::vector<Case> cases = {
      {"phi3", "lora", "all-linear"},         {"phi3", "dora", "qkv_proj,gate_up_proj"},
      {"phi4-mini", "rslora", "all-linear"},  {"gpt2", "lora", "all-linear"},
      {"gpt2", "dora", "all-linear"},         {"gpt2", "rslora", "c_attn,c_fc"},
      {"gemma2", "lora", "all-linear"},       {"gemma2", "dora", "q_proj,v_proj,down_proj"},
      {"gemma3", "lora", "all-linear"},       {"gemma3", "dora", "all-linear"},
      {"qwen3", "lora", "all-linear"},        {"qwen3", "dora", "q_proj,k_proj,v_proj,o_proj"},
      {"qwen3-tied", "dora", "all-linear"},   {"smollm2", "lora", "all-linear"},
  };
  Batch batch = make_batch();
  std::vector<at::Tensor> inputs = {batch.ids, batch.labels};
  nlohmann::json json_cases = nlohmann::json::array();
  std::vector<double> losses;
  std::vector<std::vector<NamedTensor>> grads;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    model::CausalLM m = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    const LoraConfig config = make_config(c, m);
    std::vector<NamedTensor> params = inject_lora(m, config);
    perturb(params, 100 + i);
    at::Tensor loss = causal_lm_loss(m.forward(batch.ids), batch.labels);
    loss.backward();
    losses.push_back(loss.item<double>());
    std::vector<NamedTensor> g;
    std::vector<std::string> names;
    for (const auto& p : params) {
      ASSERT_TRUE(p.tensor.grad().defined()) << p.name;
      g.push_back({p.name, p.tensor.grad().clone()});
      names.push_back(p.name);
      inputs.push_back(p.tensor.detach());
    }
    grads.push_back(std::move(g));
    json_cases.push_back({{"model_dir", fixture(c.model).string()}, {"kind", c.kind}, {"targets", c.targets},
                          {"fan_in_fan_out", config.fan_in_fan_out}, {"names", names}});
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_family_grads", inputs, {{"cases", json_cases}});
  size_t pos = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const double ref_loss = ref[pos++].item<double>();
    const double loss_err = std::abs(losses[i] - ref_loss) / std::abs(ref_loss);
    EXPECT_LE(loss_err, 1e-5) << cases[i].label() << ": loss " << losses[i] << " vs PEFT " << ref_loss;
    double worst = 0;
    std::string worst_name;
    for (const auto& g : grads[i]) {
      const at::Tensor& r = ref[pos++];
      ASSERT_GT(r.norm().item<double>(), 0) << cases[i].label() << " " << g.name << ": PEFT's gradient is zero";
      const double e = rel_err(g.tensor, r);
      EXPECT_LE(e, 1e-4) << cases[i].label() << " " << g.name;
      if (e > worst) worst = e, worst_name = g.name;
    }
    std::cout << "[ measured ] " << cases[i].label() << ": loss rel err " << loss_err << ", worst grad rel err " << worst
              << " (" << worst_name << ")\n";
  }
}

// 2. DoRA's magnitude at init is PEFT's: the row norms of W as (out, in), for a Conv1D stored (in, out)
// as for the fused projections; the same modules adapted.
TEST(LoraFamilies, DoraMagnitudeAtInitEqualsPeftOnConv1DAndFusedProjections) {
  for (const std::string name : {"gpt2", "phi3"}) {
    model::CausalLM m = model::CausalLM::load(fixture(name), c10::kCPU, at::kFloat);
    const LoraConfig config = make_config({name, "dora", "all-linear"}, m);
    std::map<std::string, at::Tensor> ours;
    for (const auto& p : inject_lora(m, config)) ours[p.name] = p.tensor.detach();
    std::vector<at::Tensor> ref = testing::call_python(
        "peft_family_init", {}, {{"model_dir", fixture(name).string()}, {"targets", "all-linear"}, {"kind", "dora"},
                                 {"fan_in_fan_out", config.fan_in_fan_out}});
    const std::vector<std::string> modules = decode_names(ref[0]);
    ASSERT_EQ(modules.size() * 3, ours.size()) << name;
    for (size_t i = 0; i < modules.size(); ++i) {
      const std::string key = "base_model.model." + modules[i] + ".lora_magnitude_vector";
      ASSERT_TRUE(ours.count(key)) << key;
      ASSERT_EQ(ours[key].sizes(), ref[1 + i].sizes()) << key;
      EXPECT_LE(rel_err(ours[key], ref[1 + i]), 1e-6) << key;
      ASSERT_EQ(ours[std::string(kPeftPrefix) + modules[i] + ".lora_A.weight"].size(1), m.linear(modules[i])->in_features()) << key;
    }
  }
}

// 3. The modules PEFT targets, and a list naming modules the family lacks is one line naming the
// family and its module names (PEFT would silently adapt the rest).
TEST(LoraFamilies, TargetsAsPeftAndNamesTheFamilyLacksAreErrors) {
  const std::map<std::string, std::vector<std::string>> cases = {
      {"gpt2", {"all-linear", "c_attn", "c_proj", "attn.c_proj", "c_attn,c_fc", "re:.*\\.h\\.1\\.mlp\\.c_.*"}},
      {"phi3", {"all-linear", "qkv_proj,o_proj", "gate_up_proj", "re:.*\\.(qkv|gate_up)_proj"}},
      {"gemma3", {"all-linear", "q_proj,v_proj"}}};
  for (const auto& [name, targets] : cases) {
    model::CausalLM m = model::CausalLM::load(fixture(name), c10::kCPU, at::kFloat);
    nlohmann::json json_cases = nlohmann::json::array();
    for (const auto& t : targets) json_cases.push_back({{"targets", t}});
    std::vector<at::Tensor> ref =
        testing::call_python("peft_targeted_modules", {}, {{"model_dir", fixture(name).string()}, {"cases", json_cases}});
    for (size_t i = 0; i < targets.size(); ++i) {
      LoraConfig config = make_config({name, "lora", targets[i].starts_with("re:") ? "all-linear" : targets[i]}, m);
      if (targets[i].starts_with("re:")) config.target_regex = targets[i].substr(3);
      std::vector<std::string> ours = select_target_modules(m, config), theirs = decode_names(ref[i]);
      std::sort(ours.begin(), ours.end());
      std::sort(theirs.begin(), theirs.end());
      EXPECT_EQ(ours, theirs) << name << " " << targets[i];
    }
  }
  auto expect_error = [](const std::string& name, const std::string& targets, const std::vector<std::string>& needles) {
    model::CausalLM m = model::CausalLM::load(fixture(name), c10::kCPU, at::kFloat);
    try {
      inject_lora(m, make_config({name, "lora", targets}, m));
      ADD_FAILURE() << name << " " << targets << ": no error";
    } catch (const AdapterError& e) {
      const std::string msg = e.what();
      for (const auto& needle : needles) EXPECT_NE(msg.find(needle), std::string::npos) << needle << " not in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    for (const auto& [path, slot] : m.named_linears())
      EXPECT_FALSE(std::dynamic_pointer_cast<LoraLinear>(*slot)) << path << ": wrapped by a failed injection";
  };
  expect_error("gpt2", "q_proj,v_proj", {"gpt2", "c_attn", "c_proj", "c_fc", "transformer.h.0.attn.c_attn", "all-linear"});
  // Llama's names on Phi-3: o_proj and down_proj exist, the fused ones do not; the missing are named.
  expect_error("phi3", "q_proj,k_proj,v_proj,o_proj,down_proj", {"q_proj, k_proj, v_proj", "phi3", "qkv_proj", "gate_up_proj"});
  expect_error("gpt2", "c_attn,gate_proj", {"names gate_proj", "gpt2", "c_fc"});
}

// 4. Adapters trained here (the method interface, as finetune runs it) are saved as PEFT saves them
// (fan_in_fan_out true on GPT-2, lora_A (r, in) / lora_B (out, r)), PEFT loads them with our logits,
// and `merge` writes directories that transformers loads with base+adapter logits (GPT-2's Conv1D
// weights back in their (in, out) layout), equal to PEFT's merge_and_unload.
TEST(LoraFamilies, SavedAdaptersLoadInPeftAndMergedDirectoriesInTransformers) {
  const std::vector<Case> cases = {{"gpt2", "lora", "all-linear"},  {"gpt2", "dora", "c_attn,c_proj"},
                                   {"phi3", "dora", "all-linear"},  {"phi4-mini", "lora", "all-linear"},
                                   {"gemma2", "lora", "all-linear"}, {"gemma3", "dora", "all-linear"},
                                   {"qwen3", "lora", "all-linear"}};
  Batch batch = make_batch();
  nlohmann::json json_cases = nlohmann::json::array();
  std::vector<at::Tensor> logits;
  std::vector<fs::path> dirs;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    model::CausalLM m = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    LoraConfig config = make_config(c, m);
    config.fan_in_fan_out = false;  // the method sets it from the model, as PEFT does
    AdapterMethodPtr method = make_lora_method(config);
    std::vector<NamedTensor> params = method->inject(m, at::kFloat);
    perturb(params, 40 + i);
    for (const auto& p : params)
      if (p.name.ends_with(".lora_A.weight")) {
        const std::string module = p.name.substr(kPeftPrefix.size(), p.name.size() - kPeftPrefix.size() - 14);
        EXPECT_EQ(p.tensor.sizes(), at::IntArrayRef({4, m.linear(module)->in_features()})) << p.name;
      }
    const fs::path dir = temp_dir("save-" + std::to_string(i));
    save_adapter(dir / "adapter", *method, params);
    std::ifstream in(dir / "adapter" / "adapter_config.json");
    EXPECT_EQ(nlohmann::json::parse(in)["fan_in_fan_out"], c.model == "gpt2") << c.label();
    at::NoGradGuard no_grad;
    const at::Tensor ours = m.forward(batch.ids);
    logits.push_back(ours);

    // Back through our own loader, and merged by `merge` (fp32).
    model::CausalLM fresh = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    apply_adapter(fresh, dir / "adapter");
    EXPECT_LE(testing::max_abs_diff(fresh.forward(batch.ids), ours), 1e-5 * ours.abs().max().item<double>()) << c.label();
    pipelines::MergeParams mp;
    mp.adapter = (dir / "adapter").string();
    mp.model = fixture(c.model).string();
    mp.output = dir / "merged";
    mp.dtype = "fp32";
    const pipelines::MergeReport report = pipelines::run_merge(mp);
    EXPECT_EQ(report.unchanged_modules, 0) << c.label();
    if (c.model == "gpt2") {
      auto merged = io::WeightFiles::open(dir / "merged");
      EXPECT_EQ(merged.tensor("transformer.h.0.attn.c_attn.weight").sizes(), at::IntArrayRef({64, 192}));
      EXPECT_EQ(merged.tensor("transformer.h.0.mlp.c_fc.weight").sizes(), at::IntArrayRef({64, 128}));
    }
    model::CausalLM merged = model::CausalLM::load(dir / "merged", c10::kCPU, at::kFloat);
    expect_close(merged.forward(batch.ids), ours, 1e-4, c.label() + " merged, ours");
    json_cases.push_back({fixture(c.model).string(), (dir / "adapter").string(), (dir / "merged").string()});
    dirs.push_back(dir);
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_family_saved", {batch.ids}, {{"cases", json_cases}});
  ASSERT_EQ(ref.size(), 3 * cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    expect_close(logits[i], ref[3 * i], 1e-4, cases[i].label() + " saved, PEFT");
    expect_close(ref[3 * i + 1], ref[3 * i], 1e-4, cases[i].label() + " merged dir in transformers vs PEFT base+adapter");
    expect_close(ref[3 * i + 1], ref[3 * i + 2], 1e-5, cases[i].label() + " merged dir vs PEFT merge_and_unload");
    fs::remove_all(dirs[i]);
  }
}

// 5. Adapters PEFT saved (fan_in_fan_out true on GPT-2) load here with PEFT's logits, through
// apply_adapter and into trainable tensors (resume), and merge as PEFT merges them.
TEST(LoraFamilies, PeftSavedAdaptersLoadWithPeftLogits) {
  const std::vector<Case> cases = {{"gpt2", "lora", "all-linear"}, {"gpt2", "dora", "all-linear"},
                                   {"phi3", "lora", "qkv_proj,gate_up_proj"}, {"gemma2", "dora", "all-linear"},
                                   {"gemma3", "lora", "all-linear"},   {"qwen3-tied", "dora", "all-linear"}};
  Batch batch = make_batch();
  nlohmann::json json_cases = nlohmann::json::array();
  for (size_t i = 0; i < cases.size(); ++i)
    json_cases.push_back({{"model_dir", fixture(cases[i].model).string()}, {"kind", cases[i].kind},
                          {"adapter_dir", temp_dir("peft-saved-" + std::to_string(i)).string()},
                          {"targets", cases[i].targets}, {"seed", i}});
  const std::vector<at::Tensor> refs = testing::call_python("peft_family_adapters", {batch.ids}, {{"cases", json_cases}});
  ASSERT_EQ(refs.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const fs::path dir = json_cases[i]["adapter_dir"].get<std::string>();
    const at::Tensor& ref = refs[i];
    model::CausalLM m = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    EXPECT_GT(apply_adapter(m, dir), 0);
    at::NoGradGuard no_grad;
    expect_close(m.forward(batch.ids), ref, 1e-4, c.label() + " PEFT-saved, applied");

    model::CausalLM resumed = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    std::vector<NamedTensor> params = make_lora_method(make_config(c, resumed))->inject(resumed, at::kFloat);
    load_adapter_into(dir, params);
    expect_close(resumed.forward(batch.ids), ref, 1e-4, c.label() + " PEFT-saved, into trainable tensors");

    pipelines::MergeParams mp;
    mp.adapter = dir.string();
    mp.model = fixture(c.model).string();
    mp.output = dir.string() + "-merged";
    mp.dtype = "fp32";
    pipelines::run_merge(mp);
    expect_close(model::CausalLM::load(mp.output, c10::kCPU, at::kFloat).forward(batch.ids), ref, 1e-4,
                 c.label() + " PEFT-saved, merged");
    fs::remove_all(dir);
    fs::remove_all(mp.output);
  }
}

// 6. Full fine-tuning: the loss and the gradient of every weight equal transformers' (train mode,
// GPT-2's dropouts off): GPT-2's LayerNorm weights and biases, learned positions (wpe), Conv1D
// weights (compared in transformers' (in, out) layout) and the tied wte; Phi-3's fused linears.
TEST(FullFineTuneFamilies, GradientsEqualTransformers) {
  Batch batch = make_batch();
  for (const std::string name : {"gpt2", "phi3", "gemma2"}) {
    model::CausalLM m = model::CausalLM::load(fixture(name), c10::kCPU, at::kFloat);
    std::vector<std::pair<std::string, at::Tensor>> trainable;
    for (auto& [weight, slot] : m.named_weights()) {
      *slot = slot->detach().clone().requires_grad_(true);
      trainable.emplace_back(weight, *slot);
    }
    m.retie_embeddings();
    at::Tensor loss = causal_lm_loss(m.forward(batch.ids), batch.labels);
    loss.backward();
    std::string names;
    for (const auto& [weight, t] : trainable) names += (names.empty() ? "" : ",") + weight;
    std::vector<at::Tensor> ref = testing::call_python("full_family_grads", {batch.ids, batch.labels},
                                                       {{"model_dir", fixture(name).string()}, {"names", names}});
    ASSERT_EQ(ref.size(), trainable.size() + 1);
    EXPECT_LE(std::abs(loss.item<double>() - ref[0].item<double>()) / ref[0].item<double>(), 1e-5) << name;
    double worst = 0;
    std::string worst_name;
    for (size_t k = 0; k < trainable.size(); ++k) {
      const auto& [weight, t] = trainable[k];
      ASSERT_TRUE(t.grad().defined()) << weight;
      const bool in_out = model::stored_in_out(m.family(), weight);
      const at::Tensor g = in_out ? t.grad().t() : t.grad();
      ASSERT_EQ(g.sizes(), ref[k + 1].sizes()) << weight;
      const double e = rel_err(g, ref[k + 1]);
      EXPECT_LE(e, 1e-4) << name << " " << weight;
      if (e > worst) worst = e, worst_name = weight;
    }
    std::cout << "[ measured ] full fine-tune " << name << ": " << trainable.size() << " weights, worst grad rel err " << worst
              << " (" << worst_name << ")\n";
  }
}

}  // namespace
}  // namespace llmtune::peft
