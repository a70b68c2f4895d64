// A test-only adapter method plugged in through the interface alone (peft/method.h): a trained
// per-output-row scale on the targeted linears, y = s ⊙ base(x) (IA3's form without its
// feed-forward special case). finetune trains it, saves it in PEFT's layout with its own
// peft_type, apply_adapter loads it, and merge folds it — no code outside this file knows it.
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/util/config.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::peft {
namespace {

namespace fs = std::filesystem;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

constexpr const char* kType = "LLMTUNE_TEST_SCALE";
constexpr std::string_view kSuffix = ".scale";

class ScaledLinear : public model::Linear {
 public:
  ScaledLinear(model::LinearPtr base, at::Tensor scale) : base_(std::move(base)), scale_(std::move(scale)) {}
  at::Tensor forward(const at::Tensor& x) const override {
    at::Tensor y = base_->forward(x);
    return y * scale_.to(y.scalar_type());
  }
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  std::vector<at::Tensor> tensors() const override {
    auto t = base_->tensors();
    t.push_back(scale_);
    return t;
  }
  at::Tensor dense_weight() const override { return base_->dense_weight(); }
  at::Tensor bias() const override { return base_->bias(); }

 private:
  model::LinearPtr base_;
  at::Tensor scale_;
};

class ScaleMethod : public AdapterMethod {
 public:
  explicit ScaleMethod(std::vector<std::string> targets) : targets_(std::move(targets)) {}
  std::string peft_type() const override { return kType; }
  std::string describe() const override { return "scale"; }
  void validate(const std::string& source) const override {
    if (targets_.empty()) throw AdapterError(source + ": scale.targets is empty");
  }
  nlohmann::json config_json(const std::vector<std::string>& modules) const override {
    return {{"peft_type", kType}, {"target_modules", targets_}, {"base_model_name_or_path", base_}};
  }
  std::string base_model() const override { return base_; }
  void set_base_model(const std::string& path) override { base_ = path; }
  std::vector<NamedTensor> inject(model::CausalLM& model, at::ScalarType dtype) override {
    std::vector<NamedTensor> out;
    for (auto& [path, slot] : model.named_linears()) {
      if (!targeted(path)) continue;
      at::Tensor s = at::ones({(*slot)->out_features()}, at::TensorOptions().dtype(dtype)).requires_grad_(true);
      *slot = std::make_shared<ScaledLinear>(*slot, s);
      out.push_back({std::string(kPeftPrefix) + path + std::string(kSuffix), s});
    }
    return out;
  }
  void set_training(model::CausalLM&, bool) const override {}
  std::string module_of_key(const std::string& key) const override {
    if (!key.starts_with(kPeftPrefix) || !key.ends_with(kSuffix)) return "";
    return key.substr(kPeftPrefix.size(), key.size() - kPeftPrefix.size() - kSuffix.size());
  }
  void check_saved(const std::map<std::string, at::Tensor>&, const std::string&) const override {}
  void check_module_fits(const std::map<std::string, at::Tensor>& tensors, const std::string& module, int64_t out_features,
                         int64_t, const std::string& source) const override {
    if (tensors.at(key(module)).numel() != out_features) throw AdapterError(source + ": " + module + " does not fit");
  }
  int64_t apply(model::CausalLM& model, const std::map<std::string, at::Tensor>& tensors, const std::string&) const override {
    int64_t n = 0;
    for (const auto& [k, t] : tensors) {
      model::LinearPtr& slot = model.linear(module_of_key(k));
      slot = std::make_shared<ScaledLinear>(slot, t.to(model.dtype()));
      ++n;
    }
    return n;
  }
  bool mergeable() const override { return true; }
  at::Tensor merged_weight(const std::map<std::string, at::Tensor>& tensors, const std::string& module,
                           const at::Tensor& w) const override {
    return w.to(at::kFloat) * tensors.at(key(module)).to(at::kFloat).view({-1, 1});
  }

 private:
  static std::string key(const std::string& module) { return std::string(kPeftPrefix) + module + std::string(kSuffix); }
  bool targeted(const std::string& path) const {
    for (const auto& t : targets_)
      if (path.ends_with("." + t)) return true;
    return false;
  }
  std::vector<std::string> targets_;
  std::string base_;
};

void register_scale_method() {
  AdapterMethodType t;
  t.name = "scale";
  t.peft_type = kType;
  t.help = "scale (test only)";
  t.add_config_keys = [](config::Schema& s) {
    s.add({.name = "scale.targets", .type = config::Type::StringList, .default_value = std::vector<std::string>{"o_proj"},
           .help = "modules to scale"});
  };
  t.from_config = [](const config::Config& cfg) -> AdapterMethodPtr {
    return std::make_shared<ScaleMethod>(cfg.get_list("scale.targets"));
  };
  t.from_json = [](const nlohmann::json& j, const std::string&) -> AdapterMethodPtr {
    return std::make_shared<ScaleMethod>(j.at("target_modules").get<std::vector<std::string>>());
  };
  register_adapter_method(std::move(t));
}

TEST(AdapterMethodInterface, ATestMethodTrainsSavesLoadsAndMergesThroughTheInterfaceAlone) {
  register_scale_method();
  const fs::path tmp = fs::temp_directory_path() / ("llmtune-scale-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);

  // Its config section comes from the registry: the same path the finetune CLI's schema takes.
  config::Schema schema;
  find_adapter_method("scale")->add_config_keys(schema);
  config::Sources sources;
  sources.overrides = {"scale.targets=[o_proj,down_proj]"};
  const config::Config cfg = config::Config::resolve(schema, sources);
  AdapterMethodPtr method = find_adapter_method("scale")->from_config(cfg);

  {
    std::ofstream data(tmp / "data.jsonl");
    for (int i = 0; i < 16; ++i) data << nlohmann::json{{"text", "the quick brown fox " + std::to_string(i)}}.dump() << "\n";
  }
  pipelines::FinetuneParams p;
  p.model = fixture("llama3").string();
  p.output = tmp / "run";
  p.method = "scale";
  p.adapter = method;
  p.data.path = tmp / "data.jsonl";
  p.data.format = "text";
  p.data.max_seq_len = 32;
  p.batch_size = 4;
  p.max_steps = 4;
  p.lr = 0.05;
  p.device = "cpu";
  p.dtype = "fp32";
  p.quiet = true;
  p.config_yaml = "# test\n";
  nlohmann::json summary = pipelines::run_finetune(p);
  EXPECT_EQ(summary["trainable_parameters"].get<int64_t>(), 2 * (64 + 64));  // 2 layers × (o_proj + down_proj) rows

  // Saved in PEFT's layout with its own peft_type; loaded back by type through the registry.
  const fs::path adapter = tmp / "run" / "adapter";
  std::ifstream in(adapter / "adapter_config.json");
  EXPECT_EQ(nlohmann::json::parse(in)["peft_type"], kType);
  SavedAdapter saved = open_adapter(adapter);
  EXPECT_EQ(saved.method->peft_type(), kType);
  EXPECT_EQ(saved.modules.size(), 4u);
  at::Tensor s0 = saved.tensors.at("base_model.model.model.layers.0.self_attn.o_proj.scale");
  EXPECT_GT((s0 - 1).abs().max().item<double>(), 1e-4);  // trained away from its init

  model::CausalLM with = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  EXPECT_EQ(apply_adapter(with, adapter), 4);
  at::manual_seed(2);
  at::Tensor ids = at::randint(0, 100, {1, 9}, at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  at::Tensor expected = with.forward(ids);

  // merge folds it through merged_weight(): the merged directory equals base + adapter.
  pipelines::MergeParams mp;
  mp.adapter = adapter.string();
  mp.model = fixture("llama3").string();
  mp.output = tmp / "merged";
  mp.dtype = "fp32";
  pipelines::run_merge(mp);
  model::CausalLM merged = model::CausalLM::load(tmp / "merged", c10::kCPU, at::kFloat);
  EXPECT_LE(testing::max_abs_diff(merged.forward(ids), expected), 1e-5 * expected.abs().max().item<double>());

  // An unknown peft_type names the supported ones.
  std::ofstream(adapter / "adapter_config.json") << R"({"peft_type": "PREFIX_TUNING"})";
  try {
    open_adapter(adapter);
    FAIL();
  } catch (const AdapterError& e) {
    EXPECT_NE(std::string(e.what()).find(kType), std::string::npos) << e.what();
  }
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace llmtune::peft
