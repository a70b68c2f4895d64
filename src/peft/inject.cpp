// Fresh trainable adapters: which linears a LoraConfig targets (PEFT's matching rules), wrapping them
// with LoRA / DoRA layers initialised as PEFT's init_lora_weights, and the train/eval switch.
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <optional>
#include <set>

#include "llmtune/peft/lora.h"
#include "llmtune/util/error.h"
#include "llmtune/util/regex.h"
#include "patterns.h"

namespace llmtune::peft {
namespace {

constexpr const char* kPrefix = "base_model.model.";

bool ends_with_name(const std::string& path, const std::string& name) {
  return path == name || (path.size() > name.size() && path.ends_with(name) && path[path.size() - name.size() - 1] == '.');
}

// PEFT's layers_to_transform: the first numbered path segment (after a `layers_pattern` when given;
// the first of them that matches decides, even when it captured no index).
bool in_transformed_layers(const LoraConfig& config, const std::string& path) {
  if (config.layers_to_transform.empty()) return true;
  std::optional<std::string> index;
  if (config.layers_pattern.empty()) {
    layer_index_regex(config, nullptr).match(path, "idx", index);
  } else {
    for (const auto& p : config.layers_pattern)
      if (layer_index_regex(config, &p).match(path, "idx", index)) break;
  }
  if (!index) return false;
  // \d+ in Python and PCRE2 (UCP) also takes non-ASCII digits, which int() reads and stoll does not:
  // no module path has them, and an index too long for int64 is in no list either.
  int64_t value = 0;
  try {
    value = std::stoll(*index);
  } catch (const std::exception&) {
    return false;
  }
  for (int64_t i : config.layers_to_transform)
    if (i == value) return true;
  return false;
}

bool is_targeted(const LoraConfig& config, const std::string& path) {
  if (!config.exclude_regex.empty()) {
    if (module_regex(config, config.exclude_regex, "exclude_modules").match(path)) return false;
  } else {
    for (const auto& name : config.exclude_modules)
      if (ends_with_name(path, name)) return false;
  }
  if (config.is_all_linear()) return path != "lm_head";  // the output embedding is never targeted
  if (!config.target_regex.empty()) return module_regex(config, config.target_regex, "target_modules").match(path);
  for (const auto& name : config.target_modules)
    if (path == name) return true;  // named exactly: layers_to_transform does not apply (as PEFT)
  for (const auto& name : config.target_modules)
    if (ends_with_name(path, name)) return in_transformed_layers(config, path);
  return false;
}

std::string describe_targets(const LoraConfig& config) {
  if (!config.target_regex.empty()) return "'" + config.target_regex + "'";
  std::string s = "[";
  for (size_t i = 0; i < config.target_modules.size(); ++i) s += (i ? ", " : "") + config.target_modules[i];
  return s + "]";
}

}  // namespace

std::vector<std::string> select_target_modules(model::CausalLM& model, const LoraConfig& config) {
  std::vector<std::string> selected, all;
  try {
    for (const auto& [path, slot] : model.named_linears()) {
      all.push_back(path);
      if (is_targeted(config, path)) selected.push_back(path);
    }
  } catch (const RegexError& e) {
    throw AdapterError(e.what());
  }
  // The distinct leaf names, in model order, and one full path to show the regex form.
  auto module_names = [&] {
    std::vector<std::string> leaves;
    for (const auto& path : all) {
      std::string leaf = path.substr(path.rfind('.') + 1);
      if (std::find(leaves.begin(), leaves.end(), leaf) == leaves.end()) leaves.push_back(leaf);
    }
    std::string names;
    for (const auto& leaf : leaves) names += (names.empty() ? "" : ", ") + leaf;
    return "its linear modules are " + names + " (full paths like '" +
           (all.empty() ? std::string() : all.front()) + "'); use those names, a regex over full paths, or \"all-linear\"";
  };
  if (selected.empty()) {
    if (config.target_modules.empty() && config.target_regex.empty())
      throw AdapterError("target_modules is empty; name the linear modules to adapt (e.g. [q_proj, v_proj]) or use \"all-linear\"");
    throw AdapterError("target_modules " + describe_targets(config) + " matches no linear module of this " + model.config().model_type +
                       " model; " + module_names());
  }
  // A listed name no module has is a mistake (Phi-3 fuses q/k/v into qkv_proj, GPT-2 names them
  // c_attn, ...): PEFT would silently adapt the others only.
  if (!config.is_all_linear() && config.target_regex.empty()) {
    std::string missing;
    for (const auto& name : config.target_modules)
      if (std::none_of(all.begin(), all.end(), [&](const std::string& path) { return ends_with_name(path, name); }))
        missing += (missing.empty() ? "" : ", ") + name;
    if (!missing.empty())
      throw AdapterError("target_modules " + describe_targets(config) + " names " + missing + ", which this " +
                         model.config().model_type + " model does not have; " + module_names());
  }
  return selected;
}

std::vector<NamedTensor> inject_lora(model::CausalLM& model, const LoraConfig& config, at::ScalarType param_dtype) {
  config.validate();
  if (!at::isFloatingType(param_dtype))
    throw AdapterError(std::string("LoRA parameter dtype ") + c10::toString(param_dtype) + " is not a floating type; use float32 or bfloat16");
  std::vector<std::string> targets = select_target_modules(model, config);
  if (config.fan_in_fan_out != model.family().conv1d)
    spdlog::warn("LoRA: fan_in_fan_out is {} but this {} model's linears are {}stored as Conv1D; the saved adapter_config.json "
                 "should say {} (PEFT corrects it the same way)", config.fan_in_fan_out, model.config().model_type,
                 model.family().conv1d ? "" : "not ", model.family().conv1d);
  std::map<std::string, model::LinearPtr*> slots;
  for (auto& [path, slot] : model.named_linears()) slots[path] = slot;

  const auto options = at::TensorOptions().dtype(param_dtype).device(model.device());
  // Only the initialisations that need nothing but the base weight's shape; the data-driven ones
  // (pissa, olora, loftq, eva, corda, ...) change the base or need calibration data.
  std::string init = config.init_lora_weights;
  std::transform(init.begin(), init.end(), init.begin(), [](unsigned char c) { return std::tolower(c); });
  if (init != "true" && init != "false" && init != "gaussian")
    throw AdapterError("init_lora_weights '" + config.init_lora_weights + "' is not supported for training (use true, false or \"gaussian\")");
  std::vector<NamedTensor> params;
  for (const auto& path : targets) {
    model::LinearPtr& slot = *slots.at(path);
    if (std::dynamic_pointer_cast<LoraLinear>(slot))
      throw AdapterError("module '" + path + "' already has a LoRA adapter; inject_lora once per model");
    const int64_t r = config.rank_for(path), in = slot->in_features(), out = slot->out_features();
    // A rank beyond min(in, out) adds parameters and compute but no expressiveness (and r = 100000
    // on a small model only exhausts memory): refused.
    if (r > std::min(in, out))
      throw ConfigError("lora.r = " + std::to_string(r) + " exceeds min(in, out) = " + std::to_string(std::min(in, out)) +
                        " of module '" + path + "' [" + std::to_string(out) + ", " + std::to_string(in) +
                        "]: choose r <= " + std::to_string(std::min(in, out)) + " (8 to 64 is usual)");
    const double scaling = config.scaling_for(path, r);

    // A: kaiming_uniform_(a=√5) over fan_in = in, i.e. U(±1/√in) (nn.Linear's default); B: zeros.
    at::Tensor a = at::empty({r, in}, options);
    at::Tensor b;
    if (init == "gaussian") {
      a.normal_(0.0, 1.0 / static_cast<double>(r));
      b = at::zeros({out, r}, options);
    } else {
      a.uniform_(-1.0 / std::sqrt(static_cast<double>(in)), 1.0 / std::sqrt(static_cast<double>(in)));
      if (init == "false") {  // PEFT's init_lora_weights=False: B keeps nn.Linear's default init too.
        b = at::empty({out, r}, options).uniform_(-1.0 / std::sqrt(static_cast<double>(r)), 1.0 / std::sqrt(static_cast<double>(r)));
      } else {
        b = at::zeros({out, r}, options);
      }
    }
    at::Tensor magnitude;
    if (config.use_dora) {
      // ‖W + s·BA‖ per output row, in the adapter dtype (PEFT's DoraLinearLayer.update_layer).
      at::Tensor w = slot->dense_weight().to(options) + b.matmul(a) * scaling;
      magnitude = at::linalg_vector_norm(w, 2, {1}).to(param_dtype);
    }
    a.requires_grad_(true);
    b.requires_grad_(true);
    params.push_back({kPrefix + path + ".lora_A.weight", a});
    params.push_back({kPrefix + path + ".lora_B.weight", b});
    if (magnitude.defined()) {
      magnitude.requires_grad_(true);
      params.push_back({kPrefix + path + ".lora_magnitude_vector", magnitude});
    }
    slot = std::make_shared<LoraLinear>(slot, a, b, scaling, magnitude, config.lora_dropout);
  }
  int64_t n_params = 0;
  for (const auto& p : params) n_params += p.tensor.numel();
  spdlog::info("{}: {} module(s) adapted, r={}, {} trainable parameters", config.use_dora ? "DoRA" : "LoRA", targets.size(),
               config.r, n_params);
  return params;
}

void set_training(model::CausalLM& model, bool training) {
  for (auto& [path, slot] : model.named_linears())
    if (auto lora = std::dynamic_pointer_cast<LoraLinear>(*slot)) lora->set_training(training);
}

}  // namespace llmtune::peft
