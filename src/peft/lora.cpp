// LoRA / rsLoRA / DoRA forward, as PEFT's lora.Linear and DoraLinearLayer compute it (eval mode).
#include "llmtune/peft/lora.h"

#include <ATen/ops/linear.h>
#include <ATen/ops/linalg_vector_norm.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "llmtune/util/error.h"

namespace llmtune::peft {
namespace {

// PEFT's pattern keys match a module path when the path ends with ".<key>" or equals it.
template <typename T>
const T* match_pattern(const std::map<std::string, T>& patterns, const std::string& path) {
  for (const auto& [key, value] : patterns) {
    try {
      if (std::regex_match(path, std::regex("(^|.*\\.)(" + key + ")"))) return &value;
    } catch (const std::regex_error&) {
      throw AdapterError("adapter_config.json: pattern '" + key + "' is not a valid regular expression");
    }
  }
  return nullptr;
}

}  // namespace

LoraConfig LoraConfig::from_json(const nlohmann::json& j, const std::string& source) {
  auto fail = [&](const std::string& m) -> void { throw AdapterError(source + ": " + m); };
  if (!j.is_object()) fail("must be a JSON object");
  LoraConfig c;
  try {
    std::string type = j.value("peft_type", "LORA");
    if (type != "LORA") fail("peft_type '" + type + "' is not supported (only LORA adapters)");
    c.r = j.value("r", int64_t{8});
    c.lora_alpha = j.value("lora_alpha", 8.0);
    c.lora_dropout = j.value("lora_dropout", 0.0);
    c.use_rslora = j.value("use_rslora", false);
    c.use_dora = j.value("use_dora", false);
    c.bias = j.value("bias", std::string("none"));
    c.base_model_name_or_path = j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string()
                                    ? j["base_model_name_or_path"].get<std::string>() : "";
    if (auto it = j.find("target_modules"); it != j.end() && !it->is_null()) {
      if (it->is_string()) c.target_regex = it->get<std::string>();
      else c.target_modules = it->get<std::vector<std::string>>();
    }
    if (auto it = j.find("rank_pattern"); it != j.end() && it->is_object())
      for (auto& [k, v] : it->items()) c.rank_pattern[k] = v.get<int64_t>();
    if (auto it = j.find("alpha_pattern"); it != j.end() && it->is_object())
      for (auto& [k, v] : it->items()) c.alpha_pattern[k] = v.get<double>();
    if (auto it = j.find("modules_to_save"); it != j.end() && !it->is_null() && !it->empty())
      fail("modules_to_save is not supported yet (fully trained copies of modules)");
    if (j.value("lora_bias", false)) fail("lora_bias is not supported yet");
    if (j.value("fan_in_fan_out", false)) fail("fan_in_fan_out adapters (GPT-2 Conv1D) do not apply to Llama-family models");
    if (c.bias != "none") fail("bias '" + c.bias + "' is not supported yet (only \"none\")");
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("a field has the wrong type (") + e.what() + ")");
  }
  if (c.r <= 0) fail("r must be a positive integer");
  return c;
}

double LoraConfig::scaling_for(const std::string& module_path, int64_t r) const {
  const double* alpha = match_pattern(alpha_pattern, module_path);
  double a = alpha ? *alpha : lora_alpha;
  return use_rslora ? a / std::sqrt(static_cast<double>(r)) : a / static_cast<double>(r);
}

LoraLinear::LoraLinear(model::LinearPtr base, at::Tensor a, at::Tensor b, double scaling, at::Tensor magnitude)
    : base_(std::move(base)), a_(std::move(a)), b_(std::move(b)), magnitude_(std::move(magnitude)), scaling_(scaling) {
  if (magnitude_.defined() && !dynamic_cast<const model::DenseLinear*>(base_.get()))
    throw AdapterError("DoRA needs a dense base weight");
}

std::vector<at::Tensor> LoraLinear::tensors() const {
  std::vector<at::Tensor> out = base_->tensors();
  for (const at::Tensor* t : {&a_, &b_, &magnitude_})
    if (t->defined()) out.push_back(*t);
  return out;
}

at::Tensor LoraLinear::forward(const at::Tensor& x) const {
  at::Tensor result = base_->forward(x);
  at::Tensor lora = at::linear(at::linear(x, a_), b_);  // B(A(x))
  if (!magnitude_.defined()) return result + lora * scaling_;

  // DoRA: the row norm of the adapted weight is a constant (detached) in PEFT.
  const auto& dense = static_cast<const model::DenseLinear&>(*base_);
  at::Tensor adapted = dense.weight() + b_.matmul(a_) * scaling_;
  at::Tensor norm = at::linalg_vector_norm(adapted, 2, {1}).detach();
  at::Tensor scale = (magnitude_ / norm).view({1, -1});
  at::Tensor wx = dense.bias().defined() ? result - dense.bias() : result;
  return result + (scale - 1) * wx + scale * lora * scaling_;
}

}  // namespace llmtune::peft
