// Trainable LoRA / rsLoRA / DoRA against PEFT + transformers on the fixture models: loss and every
// adapter gradient, PEFT's default init, the modules PEFT targets, adapters PEFT loads as saved,
// dropout placement, and the one-line errors for bad configs.
#include <ATen/core/Reduction.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn_like.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>

#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/lora.h"
#include "llmtune/util/error.h"
#include "support/interop.h"
#include "support/lora_parity.h"

namespace llmtune::peft {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

fs::path temp_dir(const std::string& tag) {
  fs::path p = fs::temp_directory_path() / ("llmtune-lora-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  return p;
}

// targets: "all-linear", "re:<regex>" or "name,name" (as reference.py's _lora_config).
LoraConfig make_config(const std::string& kind, const std::string& targets, double dropout = 0.0) {
  LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = dropout;
  c.use_rslora = kind == "rslora";
  c.use_dora = kind == "dora";
  if (targets == "all-linear" || targets.starts_with("re:")) {
    c.target_regex = targets == "all-linear" ? targets : targets.substr(3);
  } else {
    std::stringstream ss(targets);
    for (std::string name; std::getline(ss, name, ',');) c.target_modules.push_back(name);
  }
  return c;
}

using testing::causal_lm_loss;
using testing::perturb;
using testing::rel_err;

struct Batch {
  at::Tensor ids, labels;
};

Batch make_batch() {
  at::manual_seed(5);
  at::Tensor ids = at::randint(0, 1500, {2, 12}, at::TensorOptions().dtype(at::kLong));
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 4).select(0, 0).fill_(-100);  // a prompt span
  labels.narrow(1, 9, 3).select(0, 1).fill_(-100);  // padding
  return {ids, labels};
}

std::vector<std::string> decode_names(const at::Tensor& t) {
  std::string s(static_cast<const char*>(t.const_data_ptr()), t.numel());
  std::vector<std::string> names;
  std::stringstream ss(s);
  for (std::string line; std::getline(ss, line, '\n');) names.push_back(line);
  return names;
}

std::vector<std::string> param_names(const std::vector<NamedTensor>& params) {
  std::vector<std::string> names;
  for (const auto& p : params) names.push_back(p.name);
  return names;
}

struct GradCase {
  std::string model, kind, targets;
  double dropout = 0.0;
  std::map<std::string, int64_t> rank_pattern = {};
  std::map<std::string, double> alpha_pattern = {};
};

// 1. Loss and every gradient equal PEFT's (fp32), LoRA / rsLoRA / DoRA, llama3 and qwen2 (biases),
// all-linear and lists; the dropout cases run in training mode with the same seed on both sides, so
// equal gradients also show that the dropout mask falls on x before lora_A (and for DoRA on W x too).
TEST(LoraTraining, LossAndGradientsEqualPeft) {
  const std::vector<GradCase> cases = {
      {"llama3", "lora", "all-linear"},          {"llama3", "rslora", "q_proj,v_proj"},
      {"llama3", "dora", "all-linear"},          {"llama3", "dora", "q_proj,k_proj,v_proj,o_proj"},
      {"qwen2", "lora", "q_proj,k_proj,v_proj,o_proj"}, {"qwen2", "rslora", "all-linear"},
      {"qwen2", "dora", "all-linear"},           {"qwen2", "dora", "q_proj,v_proj,down_proj"},
      {"llama3", "lora", "all-linear", 0.25},    {"qwen2", "dora", "all-linear", 0.25},
      {"llama3", "dora", "all-linear", 0.0, {{"v_proj", 2}, {"mlp\\..*_proj", 6}}, {{"down_proj", 3}}},
  };
  Batch batch = make_batch();
  std::vector<at::Tensor> inputs = {batch.ids, batch.labels};
  nlohmann::json json_cases = nlohmann::json::array();
  std::vector<double> losses;
  std::vector<std::vector<NamedTensor>> grads;
  for (size_t i = 0; i < cases.size(); ++i) {
    const GradCase& c = cases[i];
    model::CausalLM m = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    LoraConfig config = make_config(c.kind, c.targets, c.dropout);
    config.rank_pattern = c.rank_pattern;
    config.alpha_pattern = c.alpha_pattern;
    std::vector<NamedTensor> params = inject_lora(m, config);
    perturb(params, 100 + i);
    set_training(m, c.dropout > 0);
    const uint64_t seed = 1000 + i;
    at::manual_seed(seed);
    at::Tensor loss = causal_lm_loss(m.forward(batch.ids), batch.labels);
    loss.backward();
    losses.push_back(loss.item<double>());
    std::vector<NamedTensor> g;
    for (const auto& p : params) {
      ASSERT_TRUE(p.tensor.grad().defined()) << p.name;
      g.push_back({p.name, p.tensor.grad().clone()});
      inputs.push_back(p.tensor.detach());
    }
    grads.push_back(std::move(g));
    json_cases.push_back({{"model_dir", fixture(c.model).string()}, {"kind", c.kind}, {"targets", c.targets},
                          {"dropout", c.dropout}, {"seed", seed}, {"names", param_names(params)},
                          {"rank_pattern", c.rank_pattern}, {"alpha_pattern", c.alpha_pattern}});
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_lora_grads", inputs, {{"cases", json_cases}});
  size_t pos = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const GradCase& c = cases[i];
    const std::string label = c.model + " " + c.kind + " " + c.targets + " dropout " + std::to_string(c.dropout) +
                              (c.rank_pattern.empty() ? "" : " rank/alpha patterns");
    const double ref_loss = ref[pos++].item<double>();
    const double loss_err = std::abs(losses[i] - ref_loss) / std::abs(ref_loss);
    EXPECT_LE(loss_err, 1e-5) << label << ": loss " << losses[i] << " vs PEFT " << ref_loss;
    double worst = 0;
    std::string worst_name;
    for (const auto& g : grads[i]) {
      const at::Tensor& r = ref[pos++];
      ASSERT_GT(r.norm().item<double>(), 0) << label << " " << g.name << ": PEFT's gradient is zero";
      double e = rel_err(g.tensor, r);
      EXPECT_LE(e, 1e-4) << label << " " << g.name;
      if (e > worst) worst = e, worst_name = g.name;
    }
    std::cout << "[ measured ] " << label << ": loss rel err " << loss_err << ", worst grad rel err " << worst << " ("
              << worst_name << ")\n";
  }
}

// 1b. A bf16 base with fp32 adapters (x cast to fp32 for the adapter, the sum back to bf16), as PEFT
// runs it (the same ATen ops in the same order, so the agreement is far tighter than bf16 rounding).
TEST(LoraTraining, Bf16BaseWithFp32AdaptersTracksPeft) {
  Batch batch = make_batch();
  std::vector<at::Tensor> inputs = {batch.ids, batch.labels};
  nlohmann::json json_cases = nlohmann::json::array();
  std::vector<double> losses;
  std::vector<std::vector<NamedTensor>> grads;
  const std::vector<std::string> kinds = {"lora", "dora"};
  for (size_t i = 0; i < kinds.size(); ++i) {
    model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kBFloat16);
    std::vector<NamedTensor> params = inject_lora(m, make_config(kinds[i], "all-linear"));
    perturb(params, 7 + i);
    for (const auto& p : params) ASSERT_EQ(p.tensor.scalar_type(), at::kFloat) << p.name;
    at::Tensor logits = m.forward(batch.ids);
    EXPECT_EQ(logits.scalar_type(), at::kBFloat16);
    at::Tensor loss = causal_lm_loss(logits, batch.labels);
    loss.backward();
    losses.push_back(loss.item<double>());
    std::vector<NamedTensor> g;
    for (const auto& p : params) {
      g.push_back({p.name, p.tensor.grad().clone()});
      inputs.push_back(p.tensor.detach());
    }
    grads.push_back(std::move(g));
    json_cases.push_back({{"model_dir", fixture("llama3").string()}, {"kind", kinds[i]}, {"targets", "all-linear"},
                          {"dtype", "bfloat16"}, {"names", param_names(params)}});
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_lora_grads", inputs, {{"cases", json_cases}});
  size_t pos = 0;
  for (size_t i = 0; i < kinds.size(); ++i) {
    const double ref_loss = ref[pos++].item<double>();
    EXPECT_LE(std::abs(losses[i] - ref_loss) / ref_loss, 1e-3) << kinds[i];
    at::Tensor ours = at::cat([&] {
      std::vector<at::Tensor> v;
      for (const auto& g : grads[i]) v.push_back(g.tensor.reshape(-1));
      return v;
    }());
    std::vector<at::Tensor> theirs;
    for (size_t k = 0; k < grads[i].size(); ++k) theirs.push_back(ref[pos++].reshape(-1));
    double e = rel_err(ours, at::cat(theirs));
    EXPECT_LE(e, 1e-3) << kinds[i];
    std::cout << "[ measured ] bf16 base llama3 " << kinds[i] << ": loss rel err " << std::abs(losses[i] - ref_loss) / ref_loss
              << ", all-gradients rel err " << e << "\n";
  }
}

// 2. PEFT's default init: B = 0 exactly, A ~ U(±1/√in) (kaiming-uniform, a=√5), DoRA magnitude = PEFT's.
TEST(LoraInit, MatchesPeftDefaultInit) {
  model::CausalLM m = model::CausalLM::load(fixture("qwen2"), c10::kCPU, at::kFloat);
  std::vector<NamedTensor> params = inject_lora(m, make_config("dora", "all-linear"));
  std::map<std::string, at::Tensor> ours;
  for (const auto& p : params) {
    EXPECT_TRUE(p.tensor.requires_grad()) << p.name;
    EXPECT_EQ(p.tensor.scalar_type(), at::kFloat) << p.name;
    ours[p.name] = p.tensor.detach();
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_init", {}, {{"model_dir", fixture("qwen2").string()},
                                                                       {"targets", "all-linear"}, {"kind", "dora"}});
  std::vector<std::string> modules = decode_names(ref[0]);
  ASSERT_EQ(modules.size() * 3, params.size());
  std::vector<at::Tensor> ours_norm, peft_norm;
  for (size_t i = 0; i < modules.size(); ++i) {
    const std::string key = "base_model.model." + modules[i];
    ASSERT_TRUE(ours.count(key + ".lora_A.weight")) << modules[i];
    at::Tensor a = ours[key + ".lora_A.weight"], b = ours[key + ".lora_B.weight"], mag = ours[key + ".lora_magnitude_vector"];
    const at::Tensor &a_ref = ref[1 + 2 * i], &mag_ref = ref[2 + 2 * i];
    ASSERT_EQ(a.sizes(), a_ref.sizes()) << modules[i];
    EXPECT_EQ(b.count_nonzero().item<int64_t>(), 0) << modules[i];
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.size(1)));
    EXPECT_LE(a.abs().max().item<double>(), bound) << modules[i];
    EXPECT_LE(a_ref.abs().max().item<double>(), bound) << modules[i];
    EXPECT_GE(a.abs().max().item<double>(), 0.9 * bound) << modules[i];
    ours_norm.push_back(a.reshape(-1) / bound);
    peft_norm.push_back(a_ref.reshape(-1) / bound);
    EXPECT_LE(rel_err(mag, mag_ref), 1e-6) << modules[i];
  }
  // The spread of A relative to the bound: 1/√3 for a uniform distribution, on both sides.
  const double std_ours = at::cat(ours_norm).std().item<double>(), std_peft = at::cat(peft_norm).std().item<double>();
  EXPECT_NEAR(std_ours, std_peft, 0.05 * std_peft);
  EXPECT_NEAR(std_ours, 1.0 / std::sqrt(3.0), 0.03);
  EXPECT_NEAR(at::cat(ours_norm).mean().item<double>(), 0.0, 0.05);
}

// 3. Adapters saved by save_adapter load in PEFT as they are (no missing / unexpected keys, the config
// re-saved by PEFT field for field identical) and give our logits; and they come back through
// apply_adapter and load_adapter_into.
TEST(LoraSave, PeftLoadsSavedAdapters) {
  const std::vector<GradCase> cases = {{"llama3", "lora", "q_proj,v_proj"}, {"llama3", "rslora", "all-linear"},
                                       {"llama3", "dora", "all-linear"}, {"qwen2", "dora", "re:.*\\.(k_proj|up_proj)"}};
  Batch batch = make_batch();
  nlohmann::json json_cases = nlohmann::json::array();
  std::vector<at::Tensor> logits;
  std::vector<fs::path> dirs;
  for (size_t i = 0; i < cases.size(); ++i) {
    const GradCase& c = cases[i];
    model::CausalLM m = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    LoraConfig config = make_config(c.kind, c.targets);
    config.base_model_name_or_path = fixture(c.model).string();
    std::vector<NamedTensor> params = inject_lora(m, config);
    at::Tensor base_logits;
    {
      at::NoGradGuard no_grad;
      base_logits = m.forward(batch.ids);
    }
    perturb(params, 40 + i);
    fs::path dir = temp_dir("save-" + std::to_string(i));
    save_adapter(dir, config, params);
    at::NoGradGuard no_grad;
    at::Tensor ours = m.forward(batch.ids);
    // The adapter must change the logits, or the comparison proves nothing.
    EXPECT_GT(testing::max_abs_diff(ours, base_logits), 1e-2 * ours.abs().max().item<double>()) << c.kind;
    logits.push_back(ours);
    dirs.push_back(dir);
    json_cases.push_back({fixture(c.model).string(), dir.string()});

    // Back through our own loaders.
    model::CausalLM fresh = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    EXPECT_EQ(apply_adapter(fresh, dir), static_cast<int64_t>(params.size() / (c.kind == "dora" ? 3 : 2)));
    EXPECT_LE(testing::max_abs_diff(fresh.forward(batch.ids), ours), 1e-5 * ours.abs().max().item<double>());
    model::CausalLM resumed = model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat);
    std::vector<NamedTensor> resumed_params = inject_lora(resumed, config);
    load_adapter_into(dir, resumed_params);
    for (size_t k = 0; k < params.size(); ++k)
      EXPECT_TRUE(at::equal(resumed_params[k].tensor, params[k].tensor)) << params[k].name;
    EXPECT_TRUE(at::equal(resumed.forward(batch.ids), ours));
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_load_saved", {batch.ids}, {{"cases", json_cases}});
  ASSERT_EQ(ref.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    double scale = ref[i].abs().max().item<double>();
    double diff = testing::max_abs_diff(logits[i], ref[i]);
    EXPECT_LE(diff, 1e-4 * scale) << cases[i].model << " " << cases[i].kind;
    std::cout << "[ measured ] saved " << cases[i].model << " " << cases[i].kind << ": max |logits - PEFT| / max = "
              << diff / scale << "\n";
    fs::remove_all(dirs[i]);
  }
}

// A PEFT-saved adapter (save_pretrained) read into fresh trainable tensors gives PEFT's logits.
TEST(LoraSave, PeftSavedAdapterLoadsIntoTrainableTensors) {
  Batch batch = make_batch();
  for (const std::string kind : {"lora", "dora"}) {
    fs::path dir = temp_dir("peft-saved-" + kind);
    at::Tensor ref = testing::call_python("peft_adapter_logits", {batch.ids},
                                          {{"model_dir", fixture("qwen2").string()}, {"adapter_dir", dir.string()},
                                           {"kind", kind}, {"targets", "all-linear"}})[0];
    model::CausalLM m = model::CausalLM::load(fixture("qwen2"), c10::kCPU, at::kFloat);
    std::vector<NamedTensor> params = inject_lora(m, make_config(kind, "all-linear"));
    load_adapter_into(dir, params);
    at::NoGradGuard no_grad;
    EXPECT_LE(testing::max_abs_diff(m.forward(batch.ids), ref), 1e-4 * ref.abs().max().item<double>()) << kind;
    fs::remove_all(dir);
  }
}

TEST(LoraSave, MismatchesAreNamedAndNothingIsHalfWritten) {
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  std::vector<NamedTensor> params = inject_lora(m, make_config("lora", "q_proj,v_proj"));
  fs::path dir = temp_dir("mismatch");
  save_adapter(dir, make_config("lora", "q_proj,v_proj"), params);
  auto expect_error = [](auto&& fn, const std::string& needle) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one naming " << needle;
    } catch (const AdapterError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  // Another rank: the shape error names the tensor, and the tensors keep their values.
  model::CausalLM other = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  LoraConfig r8 = make_config("lora", "q_proj,v_proj");
  r8.r = 8;
  std::vector<NamedTensor> p8 = inject_lora(other, r8);
  at::Tensor before = p8[0].tensor.detach().clone();
  expect_error([&] { load_adapter_into(dir, p8); }, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_TRUE(at::equal(before, p8[0].tensor));
  // More modules than the file holds: the missing tensor is named; fewer: the unexpected one.
  model::CausalLM more = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  expect_error([&] { load_adapter_into(dir, inject_lora(more, make_config("lora", "q_proj,k_proj,v_proj"))); }, "k_proj.lora_A.weight");
  model::CausalLM fewer = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  expect_error([&] { load_adapter_into(dir, inject_lora(fewer, make_config("lora", "q_proj"))); }, "v_proj");
  expect_error([&] { load_adapter_into(dir / "absent", params); }, "adapter_model.safetensors");
  // A bad key: the error names it and the existing adapter directory is untouched.
  auto before_files = fs::file_size(dir / "adapter_model.safetensors");
  std::vector<NamedTensor> bad = params;
  bad.push_back({"model.layers.0.self_attn.q_proj.weight", params[0].tensor});
  expect_error([&] { save_adapter(dir, make_config("lora", "q_proj,v_proj"), bad); }, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(fs::file_size(dir / "adapter_model.safetensors"), before_files);
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.parent_path()))
    if (e.path().filename().string().starts_with(dir.filename().string() + ".")) ++entries;
  EXPECT_EQ(entries, 0u) << "a staging directory was left behind";
  fs::remove_all(dir);
}

// 4. The module set equals PEFT's targeted_module_names for lists, regexes, all-linear, exclusions
// and layers_to_transform.
TEST(LoraTargets, SameModulesAsPeft) {
  struct TargetCase {
    std::string targets;
    std::vector<std::string> exclude;
    std::vector<int64_t> layers;
    std::string layers_pattern;
  };
  const std::vector<TargetCase> cases = {
      {"q_proj,v_proj", {}, {}},
      {"all-linear", {}, {}},
      {"re:.*\\.(q_proj|down_proj)", {}, {}},
      {"re:model\\.layers\\.1\\..*_proj", {}, {}},
      {"self_attn.o_proj,mlp.up_proj", {}, {}},
      {"all-linear", {"down_proj", "k_proj"}, {}},
      {"q_proj,gate_proj", {}, {1}},
      {"lm_head,q_proj", {}, {}},
      {"k_proj,down_proj", {}, {0}, "layers"},
  };
  for (const std::string model_name : {"llama3", "gemma"}) {
    model::CausalLM m = model::CausalLM::load(fixture(model_name), c10::kCPU, at::kFloat);
    nlohmann::json json_cases = nlohmann::json::array();
    for (const auto& c : cases) {
      nlohmann::json j{{"targets", c.targets}};
      if (!c.exclude.empty()) j["exclude_modules"] = c.exclude;
      if (!c.layers.empty()) j["layers_to_transform"] = c.layers;
      if (!c.layers_pattern.empty()) j["layers_pattern"] = c.layers_pattern;
      json_cases.push_back(j);
    }
    std::vector<at::Tensor> ref = testing::call_python("peft_targeted_modules", {},
                                                       {{"model_dir", fixture(model_name).string()}, {"cases", json_cases}});
    ASSERT_EQ(ref.size(), cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      LoraConfig config = make_config("lora", cases[i].targets);
      config.exclude_modules = cases[i].exclude;
      config.layers_to_transform = cases[i].layers;
      if (!cases[i].layers_pattern.empty()) config.layers_pattern = {cases[i].layers_pattern};
      std::vector<std::string> ours = select_target_modules(m, config);
      std::vector<std::string> theirs = decode_names(ref[i]);
      std::sort(ours.begin(), ours.end());
      std::sort(theirs.begin(), theirs.end());
      EXPECT_EQ(ours, theirs) << model_name << " " << cases[i].targets;
    }
  }
}

TEST(LoraTargets, NothingMatchesListsTheLinearModules) {
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  for (const std::string targets : {"query,value", "re:.*attention.*"}) {
    try {
      inject_lora(m, make_config("lora", targets));
      FAIL() << targets;
    } catch (const AdapterError& e) {
      std::string msg = e.what();
      for (const char* needle : {"target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                 "model.layers.0.self_attn.q_proj", "all-linear"})
        EXPECT_NE(msg.find(needle), std::string::npos) << needle << " not in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
  // The list form {"all-linear"} is the shorthand too (no module is named that).
  LoraConfig list_form;
  list_form.target_modules = {"all-linear"};
  EXPECT_EQ(select_target_modules(m, list_form), select_target_modules(m, make_config("lora", "all-linear")));
  EXPECT_EQ(list_form.to_json()["target_modules"], "all-linear");
  // Nothing was wrapped by the failed calls.
  EXPECT_EQ(select_target_modules(m, make_config("lora", "q_proj")).size(), 2u);
  EXPECT_EQ(inject_lora(m, make_config("lora", "q_proj")).size(), 4u);
}

// 5. Dropout only in training mode, at x before lora_A: eval is deterministic and equals the
// dropout-free forward; training draws a new mask per call, reproducible with the seed.
TEST(LoraDropout, TrainingOnlyAndOnTheAdapterInput) {
  Batch batch = make_batch();
  for (const std::string kind : {"lora", "dora"}) {
    model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
    std::vector<NamedTensor> params = inject_lora(m, make_config(kind, "all-linear", 0.3));
    perturb(params, 3);
    at::NoGradGuard no_grad;
    at::Tensor eval1 = m.forward(batch.ids), eval2 = m.forward(batch.ids);
    EXPECT_TRUE(at::equal(eval1, eval2)) << kind;
    set_training(m, true);
    at::manual_seed(9);
    at::Tensor train1 = m.forward(batch.ids);
    at::manual_seed(9);
    at::Tensor train1_again = m.forward(batch.ids);
    at::Tensor train2 = m.forward(batch.ids);
    EXPECT_TRUE(at::equal(train1, train1_again)) << kind;
    EXPECT_GT(testing::max_abs_diff(train1, eval1), 1e-3) << kind;
    EXPECT_GT(testing::max_abs_diff(train1, train2), 1e-3) << kind;
    set_training(m, false);
    EXPECT_TRUE(at::equal(m.forward(batch.ids), eval1)) << kind;
  }
  // One layer: the training output is base(x) + s·B(A(mask ⊙ x / (1 − p))) for the seeded mask.
  at::manual_seed(2);
  at::Tensor w = at::randn({6, 5}), a = at::randn({3, 5}), b = at::randn({6, 3}), x = at::randn({4, 5});
  LoraLinear layer(std::make_shared<model::DenseLinear>(w), a, b, 0.5, {}, 0.5);
  layer.set_training(true);
  at::manual_seed(4);
  at::Tensor y = layer.forward(x);
  at::manual_seed(4);
  at::Tensor mask = at::empty_like(x).bernoulli_(0.5);
  at::Tensor expected = at::linear(x, w) + at::linear(at::linear(x * mask / 0.5, a), b) * 0.5;
  EXPECT_LE(testing::max_abs_diff(y, expected), 1e-5);
  EXPECT_GT(mask.eq(0).sum().item<int64_t>(), 0);
}

// 6. Bad configurations: one line naming the key.
TEST(LoraErrors, BadConfigsAreOneLineErrorsNamingTheKey) {
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  auto expect_error = [&](LoraConfig c, const std::string& key, at::ScalarType dtype = at::kFloat) {
    try {
      inject_lora(m, c, dtype);
      ADD_FAILURE() << "no error for " << key;
    } catch (const AdapterError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(key), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  };
  LoraConfig c = make_config("lora", "q_proj");
  c.r = 0;
  expect_error(c, "r must be a positive integer");
  c = make_config("lora", "q_proj");
  c.lora_alpha = -1;
  expect_error(c, "lora_alpha");
  c = make_config("lora", "q_proj");
  c.lora_alpha = 0;
  expect_error(c, "lora_alpha");
  for (double p : {1.0, -0.1, std::nan("")}) {
    c = make_config("lora", "q_proj");
    c.lora_dropout = p;
    expect_error(c, "lora_dropout");
  }
  c = make_config("lora", "q_proj");
  c.init_lora_weights = "pissa";
  expect_error(c, "init_lora_weights");
  c = make_config("lora", "q_proj");
  c.bias = "all";
  expect_error(c, "bias");
  c = make_config("lora", "q_proj");
  c.rank_pattern["v_proj"] = 0;
  expect_error(c, "rank_pattern");
  c = make_config("lora", "re:[unclosed");
  expect_error(c, "target_modules");
  expect_error(make_config("lora", "q_proj"), "dtype", at::kLong);
  inject_lora(m, make_config("lora", "q_proj"));
  expect_error(make_config("lora", "q_proj"), "model.layers.0.self_attn.q_proj");

  // The same checks on adapter_config.json content name the file.
  for (const char* bad : {R"({"r": 0})", R"({"lora_alpha": 0})", R"({"lora_dropout": 1.5})", R"({"r": "eight"})",
                          R"({"modules_to_save": ["lm_head"]})", R"({"layer_replication": [[0, 1]]})"}) {
    try {
      LoraConfig::from_json(nlohmann::json::parse(bad), "x/adapter_config.json");
      ADD_FAILURE() << bad;
    } catch (const AdapterError& e) {
      EXPECT_TRUE(std::string(e.what()).starts_with("x/adapter_config.json: ")) << e.what();
    }
  }
}

// rank_pattern / alpha_pattern and a to_json → from_json round trip.
TEST(LoraConfigJson, RoundTripsAndHonoursPatterns) {
  LoraConfig c = make_config("dora", "q_proj,v_proj", 0.1);
  c.rank_pattern["v_proj"] = 2;
  c.alpha_pattern["v_proj"] = 3;
  c.lora_alpha = 16;
  nlohmann::json j = c.to_json();
  EXPECT_EQ(j["lora_alpha"], 16);
  EXPECT_TRUE(j["lora_alpha"].is_number_integer());
  EXPECT_TRUE(j["lora_dropout"].is_number_float());
  EXPECT_EQ(j["target_modules"], nlohmann::json({"q_proj", "v_proj"}));
  EXPECT_EQ(j["inference_mode"], true);
  LoraConfig back = LoraConfig::from_json(j, "test");
  EXPECT_EQ(back.to_json(), j);
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  std::vector<NamedTensor> params = inject_lora(m, c);
  for (const auto& p : params) {
    if (p.name.ends_with("v_proj.lora_A.weight")) {
      EXPECT_EQ(p.tensor.size(0), 2) << p.name;
    } else if (p.name.ends_with("q_proj.lora_A.weight")) {
      EXPECT_EQ(p.tensor.size(0), 4) << p.name;
    }
  }
  auto v = std::dynamic_pointer_cast<LoraLinear>(m.linear("model.layers.0.self_attn.v_proj"));
  auto q = std::dynamic_pointer_cast<LoraLinear>(m.linear("model.layers.0.self_attn.q_proj"));
  ASSERT_TRUE(v && q);
  EXPECT_DOUBLE_EQ(v->scaling(), 3.0 / 2.0);
  EXPECT_DOUBLE_EQ(q->scaling(), 16.0 / 4.0);
}

}  // namespace
}  // namespace llmtune::peft
