// LoRA / rsLoRA / DoRA behind the adapter-method interface: its finetune config section (lora.*),
// adapter_config.json both ways, saved tensors grouped per module and checked, applying a saved
// adapter, and merging as PEFT's merge_and_unload.
#include <ATen/ops/count_nonzero.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "llmtune/peft/lora.h"
#include "llmtune/util/config.h"
#include "llmtune/util/error.h"
#include "methods.h"

namespace llmtune::peft {
namespace {

constexpr std::string_view kSuffixes[] = {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector.weight",
                                          ".lora_magnitude_vector"};

// The tensors of one module, by its path.
AdapterModuleTensors module_tensors(const std::map<std::string, at::Tensor>& tensors, const std::string& module) {
  const std::string p = std::string(kPeftPrefix) + module;
  auto get = [&](const std::string& key) {
    auto it = tensors.find(key);
    return it == tensors.end() ? at::Tensor() : it->second;
  };
  AdapterModuleTensors t;
  t.a = get(p + ".lora_A.weight");
  t.b = get(p + ".lora_B.weight");
  t.magnitude = get(p + ".lora_magnitude_vector");
  if (!t.magnitude.defined()) t.magnitude = get(p + ".lora_magnitude_vector.weight");
  return t;
}

// PEFT's convention: a list is matched as name suffixes, a single string as a regular expression.
void set_targets(LoraConfig& lora, const std::vector<std::string>& targets) {
  static const std::string regex_chars = "\\^$.|?*+()[]{}";
  if (targets.size() == 1 && targets[0] != "all-linear" && targets[0].find_first_of(regex_chars) != std::string::npos)
    lora.target_regex = targets[0];
  else
    lora.target_modules = targets;
}

class LoraMethod : public AdapterMethod {
 public:
  explicit LoraMethod(LoraConfig config) : config_(std::move(config)) {}

  std::string peft_type() const override { return "LORA"; }
  std::string describe() const override {
    return fmt::format("{} r={} alpha={}{}", config_.use_dora ? "DoRA" : "LoRA", config_.r, config_.lora_alpha,
                       config_.use_rslora ? " (rsLoRA scaling)" : "");
  }
  void validate(const std::string& source) const override { config_.validate(source); }
  nlohmann::json config_json(const std::vector<std::string>& modules) const override {
    // PEFT saves the expanded module list for "all-linear".
    LoraConfig saved = config_;
    if (config_.is_all_linear()) {
      saved.target_regex.clear();
      saved.target_modules = modules;
    }
    return saved.to_json();
  }
  std::string base_model() const override { return config_.base_model_name_or_path; }
  // A local directory is recorded absolute, so that merge finds it from any working directory; a
  // hub repo id stays as it is (PEFT records whatever from_pretrained was given: both read back).
  void set_base_model(const std::string& path) override {
    std::error_code ec;
    config_.base_model_name_or_path =
        std::filesystem::is_directory(path, ec) ? std::filesystem::absolute(path, ec).lexically_normal().string() : path;
  }

  std::vector<NamedTensor> inject(model::CausalLM& model, at::ScalarType param_dtype) override {
    // As PEFT: fan_in_fan_out follows the base layers (true on GPT-2's Conv1D), whatever was asked.
    config_.fan_in_fan_out = model.family().conv1d;
    return inject_lora(model, config_, param_dtype);
  }
  void set_training(model::CausalLM& model, bool training) const override { peft::set_training(model, training); }

  std::string module_of_key(const std::string& key) const override {
    if (!key.starts_with(kPeftPrefix)) return "";
    for (std::string_view suffix : kSuffixes)
      if (key.ends_with(suffix) && key.size() > kPeftPrefix.size() + suffix.size())
        return key.substr(kPeftPrefix.size(), key.size() - kPeftPrefix.size() - suffix.size());
    return "";
  }

  void check_saved(const std::map<std::string, at::Tensor>& tensors, const std::string& source) const override {
    for (const auto& [key, t] : tensors) {
      const std::string module = module_of_key(key);
      const AdapterModuleTensors m = module_tensors(tensors, module);
      if (!m.a.defined() || !m.b.defined())
        throw AdapterError(source + ": module '" + module + "' lacks lora_A or lora_B");
      const std::string p = std::string(kPeftPrefix) + module;
      if (m.a.dim() != 2 || m.b.dim() != 2 || m.b.size(1) != m.a.size(0))
        throw AdapterError(source + ": module '" + module + "': lora_A " + c10::str(m.a.sizes()) + " and lora_B " +
                           c10::str(m.b.sizes()) + " are not (r, in) and (out, r) matrices of one rank r");
      // PEFT builds each module at the rank adapter_config.json gives and refuses tensors of another.
      const int64_t r = config_.rank_for(module);
      if (m.a.size(0) != r) {
        const auto config_path = std::filesystem::path(source).parent_path() / "adapter_config.json";
        throw AdapterError(config_path.string() + ": r = " + std::to_string(r) +
                           (config_.rank_pattern.empty() ? "" : " (with rank_pattern)") + " but tensor '" + p +
                           ".lora_A.weight' in " + std::filesystem::path(source).filename().string() + " has rank " +
                           std::to_string(m.a.size(0)) + " (shape " + c10::str(m.a.sizes()) +
                           "): the config and the weights disagree (PEFT refuses to load it too)");
      }
      if (config_.use_dora != m.magnitude.defined())
        throw AdapterError(source + ": module '" + module + "': use_dora is " + (config_.use_dora ? "true" : "false") +
                           " but the magnitude vector is " + (m.magnitude.defined() ? "present" : "absent"));
    }
  }

  void check_module_fits(const std::map<std::string, at::Tensor>& tensors, const std::string& module, int64_t out_features,
                         int64_t in_features, const std::string& source) const override {
    const AdapterModuleTensors t = module_tensors(tensors, module);
    const int64_t r = t.a.size(0);
    if (t.a.dim() != 2 || t.b.dim() != 2 || t.a.size(1) != in_features || t.b.size(0) != out_features || t.b.size(1) != r ||
        (t.magnitude.defined() && (t.magnitude.dim() != 1 || t.magnitude.size(0) != out_features))) {
      throw AdapterError(source + ": module '" + module + "': lora_A " + c10::str(t.a.sizes()) + " / lora_B " +
                         c10::str(t.b.sizes()) + " do not fit the base layer [" + std::to_string(out_features) + ", " +
                         std::to_string(in_features) + "] (adapter made for another base?)");
    }
  }

  int64_t apply(model::CausalLM& model, const std::map<std::string, at::Tensor>& tensors,
                const std::string& source) const override {
    std::set<std::string> modules;
    for (const auto& [key, t] : tensors) modules.insert(module_of_key(key));
    if (config_.fan_in_fan_out != model.family().conv1d)  // PEFT warns and corrects the flag the same way
      spdlog::warn("{}: fan_in_fan_out is {} but this {} model's linears are {}stored as Conv1D; applied as {}",
                   source, config_.fan_in_fan_out, model.config().model_type, model.family().conv1d ? "" : "not ",
                   model.family().conv1d ? "Conv1D (fan_in_fan_out true)" : "nn.Linear (fan_in_fan_out false)");
    const auto device = model.device();
    const auto dtype = model.dtype();
    auto cast = [&](const at::Tensor& x) { return x.defined() ? x.to(device, dtype) : x; };
    for (const auto& module : modules) {
      model::LinearPtr& slot = model.linear(module);
      const AdapterModuleTensors t = module_tensors(tensors, module);
      slot = std::make_shared<LoraLinear>(slot, cast(t.a), cast(t.b), config_.scaling_for(module, t.a.size(0)),
                                          cast(t.magnitude));
    }
    return static_cast<int64_t>(modules.size());
  }

  bool mergeable() const override { return true; }
  at::Tensor merged_weight(const std::map<std::string, at::Tensor>& tensors, const std::string& module,
                           const at::Tensor& w) const override {
    const AdapterModuleTensors t = module_tensors(tensors, module);
    return merge_lora_weight(w, t, config_.scaling_for(module, t.a.size(0)));
  }
  bool update_is_zero(const std::map<std::string, at::Tensor>& tensors, const std::string& module) const override {
    return at::count_nonzero(module_tensors(tensors, module).b).item<int64_t>() == 0;
  }

  const LoraConfig& config() const { return config_; }

 private:
  LoraConfig config_;
};

void add_lora_keys(config::Schema& s) {
  using config::Type;
  s.add({.name = "lora.r", .type = Type::Int, .default_value = int64_t{16}, .help = "LoRA rank", .min = 1});
  s.add({.name = "lora.alpha", .type = Type::Float, .default_value = 32.0,
         .help = "LoRA alpha (scaling alpha/r, or alpha/sqrt(r) with rsLoRA)", .min = 0, .min_exclusive = true});
  s.add({.name = "lora.dropout", .type = Type::Float, .default_value = 0.05, .help = "dropout on the adapter input while training",
         .min = 0, .max = 0.999});
  s.add({.name = "lora.target_modules", .type = Type::StringList, .default_value = std::vector<std::string>{"all-linear"},
         .help = "module names matched as path suffixes (q_proj, v_proj, ...), one regular expression matched against the "
                 "whole path, or all-linear (every linear but lm_head)"});
  s.add({.name = "lora.use_rslora", .type = Type::Bool, .default_value = false, .help = "rank-stabilized scaling alpha/sqrt(r)"});
  s.add({.name = "lora.use_dora", .type = Type::Bool, .default_value = false,
         .help = "DoRA: weight-decomposed LoRA (a trained magnitude per output row)"});
}

LoraConfig lora_config_from(const config::Config& cfg) {
  LoraConfig c;
  c.r = cfg.get_int("lora.r");
  c.lora_alpha = cfg.get_float("lora.alpha");
  c.lora_dropout = cfg.get_float("lora.dropout");
  set_targets(c, cfg.get_list("lora.target_modules"));
  c.use_rslora = cfg.get_bool("lora.use_rslora");
  c.use_dora = cfg.get_bool("lora.use_dora");
  try {
    c.validate("lora settings");
  } catch (const AdapterError& e) {
    throw ConfigError(e.what());  // a lora.* value (a target regex that does not compile): a config error
  }
  return c;
}

}  // namespace

AdapterMethodPtr make_lora_method(const LoraConfig& config) { return std::make_shared<LoraMethod>(config); }

void save_adapter(const std::filesystem::path& dir, const LoraConfig& config, const std::vector<NamedTensor>& params) {
  save_adapter(dir, LoraMethod(config), params);
}

AdapterMethodType lora_method_type() {
  AdapterMethodType t;
  t.name = "lora";
  t.peft_type = "LORA";
  t.help = "lora (LoRA, rsLoRA, DoRA)";
  t.add_config_keys = add_lora_keys;
  t.from_config = [](const config::Config& cfg) -> AdapterMethodPtr { return make_lora_method(lora_config_from(cfg)); };
  t.from_json = [](const nlohmann::json& j, const std::string& source) -> AdapterMethodPtr {
    return make_lora_method(LoraConfig::from_json(j, source));
  };
  return t;
}

}  // namespace llmtune::peft
