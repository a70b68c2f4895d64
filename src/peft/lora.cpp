// LoRA / rsLoRA / DoRA forward as PEFT's lora.Linear and DoraLinearLayer compute it (train and eval),
// and LoraConfig as PEFT's adapter_config.json spells it.
#include "llmtune/peft/lora.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/native_dropout.h>
#include <ATen/ops/native_dropout_backward.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <type_traits>

#include "llmtune/util/error.h"
#include "llmtune/util/regex.h"
#include "patterns.h"

namespace llmtune::peft {
namespace {

// PEFT's get_pattern_key: the first key whose pattern matches the path's end after a '.' (or the
// whole path). Keys are tried in sorted order, the order of the adapter_config.json files PEFT writes
// (sort_keys=True) and so of its own reading of them; only a hand-written file with keys out of order
// that match the same module could resolve differently in PEFT (in file order).
template <typename T>
const T* match_pattern(const LoraConfig& config, const std::map<std::string, T>& patterns, const std::string& path,
                       const char* field) {
  try {
    for (const auto& [key, value] : patterns)
      if (pattern_key_regex(config, key, field).match(path)) return &value;
  } catch (const RegexError& e) {
    throw AdapterError(e.what());
  }
  return nullptr;
}

// null, one string, or a list of strings: the string goes to `one`, the list to `many`.
void read_names(const nlohmann::json& j, const char* key, std::vector<std::string>& many, std::string& one) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  if (it->is_string()) one = it->get<std::string>();
  else many = it->get<std::vector<std::string>>();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

nlohmann::json sorted_list(const std::vector<std::string>& names) {
  std::set<std::string> unique(names.begin(), names.end());
  return nlohmann::json(std::vector<std::string>(unique.begin(), unique.end()));
}

}  // namespace

LoraConfig LoraConfig::from_json(const nlohmann::json& j, const std::string& source) {
  auto fail = [&](const std::string& m) -> void { throw AdapterError(source + ": " + m); };
  if (!j.is_object()) fail("must be a JSON object");
  // A field of the wrong JSON type is named, with the type it has ("lora_alpha" must be a number).
  auto field = [&](const char* key, auto fallback) {
    using T = decltype(fallback);
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    const bool ok = std::is_same_v<T, bool> ? it->is_boolean()
                    : std::is_same_v<T, int64_t> ? it->is_number_integer()
                    : std::is_arithmetic_v<T> ? it->is_number() : it->is_string();
    if (!ok)
      fail(std::string("field '") + key + "' must be " +
           (std::is_same_v<T, bool> ? "true or false" : std::is_same_v<T, int64_t> ? "an integer"
            : std::is_arithmetic_v<T> ? "a number" : "a string") + ", got " + it->type_name() + " " +
           it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).substr(0, 40));
    return it->template get<T>();
  };
  LoraConfig c;
  try {
    std::string type = field("peft_type", std::string("LORA"));
    if (type != "LORA") fail("peft_type '" + type + "' is not supported (only LORA adapters)");
    c.r = field("r", int64_t{8});
    c.lora_alpha = field("lora_alpha", 8.0);
    c.lora_dropout = field("lora_dropout", 0.0);
    c.use_rslora = field("use_rslora", false);
    c.use_dora = field("use_dora", false);
    c.bias = field("bias", std::string("none"));
    c.base_model_name_or_path = j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string()
                                    ? j["base_model_name_or_path"].get<std::string>() : "";
    if (j.contains("task_type") && j["task_type"].is_string()) c.task_type = j["task_type"].get<std::string>();
    read_names(j, "target_modules", c.target_modules, c.target_regex);
    read_names(j, "exclude_modules", c.exclude_modules, c.exclude_regex);
    std::string one_pattern;
    read_names(j, "layers_pattern", c.layers_pattern, one_pattern);
    if (!one_pattern.empty()) c.layers_pattern = {one_pattern};
    // Integers only: a float such as 1e30 converted to int64 is undefined behaviour.
    auto integer = [&](const nlohmann::json& v, const std::string& what) {
      if (!v.is_number_integer()) fail(what + " must be an integer, got " + v.dump());
      return v.get<int64_t>();
    };
    if (auto it = j.find("layers_to_transform"); it != j.end() && !it->is_null()) {
      if (it->is_array()) {
        for (const auto& v : *it) c.layers_to_transform.push_back(integer(v, "layers_to_transform"));
      } else {
        c.layers_to_transform = {integer(*it, "layers_to_transform")};
      }
    }
    if (auto it = j.find("init_lora_weights"); it != j.end() && !it->is_null()) {
      if (it->is_boolean()) c.init_lora_weights = it->get<bool>() ? "true" : "false";
      else c.init_lora_weights = it->get<std::string>();
    }
    if (auto it = j.find("rank_pattern"); it != j.end() && it->is_object())
      for (auto& [k, v] : it->items()) c.rank_pattern[k] = integer(v, "rank_pattern['" + k + "']");
    if (auto it = j.find("alpha_pattern"); it != j.end() && it->is_object())
      for (auto& [k, v] : it->items()) c.alpha_pattern[k] = v.get<double>();
    if (auto it = j.find("modules_to_save"); it != j.end() && !it->is_null() && !it->empty())
      fail("modules_to_save is not supported yet (fully trained copies of modules)");
    if (field("lora_bias", false)) fail("lora_bias is not supported yet");
    c.fan_in_fan_out = field("fan_in_fan_out", false);
    if (auto it = j.find("layer_replication"); it != j.end() && !it->is_null())
      fail("layer_replication is not supported");
    c.source = source;
  } catch (const nlohmann::json::exception& e) {
    // (lists of names, patterns): nlohmann's "[json.exception.type_error.302] type must be ..." without its tag
    std::string what = e.what();
    if (auto close = what.find("] "); what.starts_with("[json.exception") && close != std::string::npos) what = what.substr(close + 2);
    fail("a field has the wrong type (" + what + ")");
  }
  c.validate(source);
  return c;
}

void LoraConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& m) { throw AdapterError(source + ": " + m); };
  if (r <= 0) fail("r must be a positive integer (got " + std::to_string(r) + "); set r to e.g. 8 or 16");
  if (!(lora_alpha > 0) || !std::isfinite(lora_alpha))
    fail("lora_alpha must be a positive number (got " + std::to_string(lora_alpha) + "); set lora_alpha to e.g. 2·r");
  if (!(lora_dropout >= 0 && lora_dropout < 1))
    fail("lora_dropout must be in [0, 1) (got " + std::to_string(lora_dropout) + ")");
  if (bias != "none") fail("bias '" + bias + "' is not supported yet (only \"none\")");
  for (const auto& [key, value] : rank_pattern)
    if (value <= 0) fail("rank_pattern['" + key + "'] must be a positive integer (got " + std::to_string(value) + ")");
  for (const auto& [key, value] : alpha_pattern)
    if (!(value > 0)) fail("alpha_pattern['" + key + "'] must be a positive number (got " + std::to_string(value) + ")");
  if (!target_modules.empty() && !target_regex.empty())
    fail("target_modules is either a list of names or one regex, not both");
  // Every regular expression compiles (a bad one is named now, not when the first module meets it).
  try {
    if (!target_regex.empty() && !is_all_linear()) module_regex(*this, target_regex, "target_modules");
    if (!exclude_regex.empty()) module_regex(*this, exclude_regex, "exclude_modules");
    for (const auto& [key, value] : rank_pattern) pattern_key_regex(*this, key, "rank_pattern");
    for (const auto& [key, value] : alpha_pattern) pattern_key_regex(*this, key, "alpha_pattern");
    for (const auto& p : layers_pattern) layer_index_regex(*this, &p);
  } catch (const RegexError& e) {
    throw AdapterError(e.what());
  }
}

std::string LoraConfig::where(const std::string& key) const { return source.empty() ? "lora." + key : source + ": " + key; }

BoundedRegex module_regex(const LoraConfig& config, const std::string& pattern, const char* key) {
  return BoundedRegex(pattern, BoundedRegex::Anchor::full, config.where(key));
}

BoundedRegex pattern_key_regex(const LoraConfig& config, const std::string& pattern_key, const char* key) {
  // The key is inserted as PEFT inserts it, unescaped: it is a regular expression.
  return BoundedRegex("(.*\\.)?(" + pattern_key + ")$", BoundedRegex::Anchor::start, config.where(key) + " key",
                      pattern_key);
}

BoundedRegex layer_index_regex(const LoraConfig& config, const std::string* layers_pattern) {
  if (!layers_pattern)
    return BoundedRegex(R"(.*?\.[^.]*\.(?P<idx>\d+)\.)", BoundedRegex::Anchor::start, "the layer index pattern");
  // Unparenthesized, as PEFT: "a|b" becomes two alternatives of the whole pattern.
  return BoundedRegex("(?:^|.*?\\.)" + *layers_pattern + "\\.(?P<idx>\\d+)\\.", BoundedRegex::Anchor::start,
                      config.where("layers_pattern"), *layers_pattern);
}

bool LoraConfig::is_all_linear() const {
  if (!target_regex.empty()) return lower(target_regex) == "all-linear";
  return target_modules.size() == 1 && lower(target_modules[0]) == "all-linear";
}

nlohmann::json LoraConfig::to_json() const {
  using nlohmann::json;
  json j;
  json targets = nullptr;
  if (is_all_linear()) targets = "all-linear";
  else if (!target_regex.empty()) targets = target_regex;
  else if (!target_modules.empty()) targets = sorted_list(target_modules);
  json excludes = nullptr;
  if (!exclude_regex.empty()) excludes = exclude_regex;
  else if (!exclude_modules.empty()) excludes = sorted_list(exclude_modules);
  json init = lower(init_lora_weights) == "true" ? json(true) : lower(init_lora_weights) == "false" ? json(false)
                                                                                                  : json(init_lora_weights);
  // Integral alphas are ints in PEFT's files (lora_alpha: int).
  auto number = [](double v) { return v == std::floor(v) && std::abs(v) < 1e15 ? json(static_cast<int64_t>(v)) : json(v); };
  json alphas = json::object();
  for (const auto& [k, v] : alpha_pattern) alphas[k] = number(v);
  json ranks = json::object();
  for (const auto& [k, v] : rank_pattern) ranks[k] = v;

  j["alora_invocation_tokens"] = nullptr;
  j["alpha_pattern"] = alphas;
  j["arrow_config"] = nullptr;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = base_model_name_or_path.empty() ? json(nullptr) : json(base_model_name_or_path);
  j["bias"] = bias;
  j["corda_config"] = nullptr;
  j["ensure_weight_tying"] = false;
  j["eva_config"] = nullptr;
  j["exclude_modules"] = excludes;
  j["fan_in_fan_out"] = fan_in_fan_out;
  j["inference_mode"] = true;
  j["init_lora_weights"] = init;
  j["kasa_config"] = nullptr;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = layers_pattern.empty() ? json(nullptr)
                        : layers_pattern.size() == 1 ? json(layers_pattern[0]) : json(layers_pattern);
  j["layers_to_transform"] = layers_to_transform.empty() ? json(nullptr) : json(layers_to_transform);
  j["loftq_config"] = json::object();
  j["lora_alpha"] = number(lora_alpha);
  j["lora_bias"] = false;
  j["lora_dropout"] = lora_dropout;
  j["lora_ga_config"] = nullptr;
  j["megatron_config"] = nullptr;
  j["megatron_core"] = "megatron.core";
  j["modules_to_save"] = nullptr;
  j["monteclora_config"] = nullptr;
  j["peft_type"] = "LORA";
  j["peft_version"] = "0.21.2";
  j["qalora_group_size"] = 16;
  j["r"] = r;
  j["rank_pattern"] = ranks;
  j["revision"] = nullptr;
  j["target_modules"] = targets;
  j["target_parameters"] = nullptr;
  j["task_type"] = task_type;
  j["trainable_token_indices"] = nullptr;
  j["use_bdlora"] = nullptr;
  j["use_dora"] = use_dora;
  j["use_qalora"] = false;
  j["use_rslora"] = use_rslora;
  j["velora_config"] = nullptr;
  return j;
}

int64_t LoraConfig::rank_for(const std::string& module_path) const {
  const int64_t* rank = match_pattern(*this, rank_pattern, module_path, "rank_pattern");
  return rank ? *rank : r;
}

double LoraConfig::scaling_for(const std::string& module_path, int64_t r) const {
  const double* alpha = match_pattern(*this, alpha_pattern, module_path, "alpha_pattern");
  double a = alpha ? *alpha : lora_alpha;
  return use_rslora ? a / std::sqrt(static_cast<double>(r)) : a / static_cast<double>(r);
}

namespace {

// The adapter branch with dropout, s · B (A (x ∘ m)), saving for backward the input (the same
// tensor every adapter over it already holds), the mask as bool and A's r-wide output, where autograd
// saves the dropped-out input and the float mask per adapter: 8 bytes per input element instead of
// 1, which on a QLoRA step was most of the activation memory. The mask is drawn as PEFT's F.dropout
// draws it (on the CPU ATen's composite dropout: bernoulli(1 - p) / (1 - p), the same generator
// calls, so the same masks and the same products; on other devices the fused native_dropout), and
// the backward rebuilds x ∘ m bit for bit.
struct LoraDropoutBranch : public torch::autograd::Function<LoraDropoutBranch> {
  static at::Tensor dropped(const at::Tensor& x, const at::Tensor& mask, double p) {
    if (!x.is_cpu()) return at::native_dropout_backward(x, mask, 1.0 / (1.0 - p));
    return x * mask.to(x.scalar_type()).div_(1 - p);
  }

  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& a,
                            const at::Tensor& b, double p, double scaling) {
    at::Tensor xd, mask;
    if (x.is_cpu()) {
      at::Tensor noise = at::empty_like(x).bernoulli_(1 - p);
      noise.div_(1 - p);
      mask = noise.ne(0);
      xd = x * noise;
    } else {
      std::tie(xd, mask) = at::native_dropout(x, p, true);
    }
    at::Tensor h = at::linear(xd, a);
    ctx->save_for_backward({x, mask, h, a, b});
    ctx->saved_data["p"] = p;
    ctx->saved_data["scaling"] = scaling;
    return at::linear(h, b) * scaling;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mask = saved[1], &h = saved[2], &a = saved[3], &b = saved[4];
    const double p = ctx->saved_data["p"].toDouble(), scaling = ctx->saved_data["scaling"].toDouble();
    // The steps autograd takes through `linear(linear(x ∘ m, A), B) * s`, in its order.
    const at::Tensor g = grad_outputs[0] * scaling;
    at::Tensor grad_b = g.reshape({-1, g.size(-1)}).t().mm(h.reshape({-1, h.size(-1)}));
    const at::Tensor gh = g.matmul(b);
    at::Tensor grad_a = gh.reshape({-1, gh.size(-1)}).t().mm(dropped(x, mask, p).reshape({-1, x.size(-1)}));
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0)) grad_x = dropped(gh.matmul(a), mask, p);
    return {grad_x, grad_a, grad_b, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

LoraLinear::LoraLinear(model::LinearPtr base, at::Tensor a, at::Tensor b, double scaling, at::Tensor magnitude,
                       double dropout)
    : base_(std::move(base)), a_(std::move(a)), b_(std::move(b)), magnitude_(std::move(magnitude)), scaling_(scaling),
      dropout_(dropout) {}

std::vector<at::Tensor> LoraLinear::tensors() const {
  std::vector<at::Tensor> out = base_->tensors();
  for (const at::Tensor* t : {&a_, &b_, &magnitude_})
    if (t->defined()) out.push_back(*t);
  return out;
}

at::Tensor LoraLinear::dora_norm() const {
  // ‖W + s·BA‖² per row = ‖W‖² + 2s·Σ_r (W Aᵀ ∘ B) + s²·Σ_r (B (A Aᵀ) ∘ B): no (out, in) B·A, and
  // ‖W‖² cached (the base is frozen under an adapter). W Aᵀ is taken in fp32 as PEFT's promotion
  // does (in bf16 the gradients drift ~2% from PEFT's), so a half-precision W is upcast for it.
  at::NoGradGuard no_grad;
  const at::Tensor w = base_->dense_weight();
  if (!w_norm_sq_.defined()) w_norm_sq_ = w.to(at::kFloat).pow(2).sum(1);
  const at::Tensor a = a_.detach().to(at::kFloat), b = b_.detach().to(at::kFloat);
  const at::Tensor wa = at::linear(a, w.scalar_type() == at::kFloat ? w : w.to(at::kFloat)).t();  // (out, r) = W Aᵀ
  const at::Tensor cross = (wa * b).sum(1);
  const at::Tensor lora_sq = (b.matmul(a.matmul(a.t())) * b).sum(1);
  return (w_norm_sq_ + cross * (2 * scaling_) + lora_sq * (scaling_ * scaling_)).clamp_min(0).sqrt();
}

at::Tensor LoraLinear::forward(const at::Tensor& x) const {
  // x: (..., in) → (..., out). The adapter runs in its own dtype (PEFT's _cast_input_dtype).
  at::Tensor result = base_->forward(x);
  const auto result_dtype = result.scalar_type();
  at::Tensor xa = x.scalar_type() == a_.scalar_type() ? x : x.to(a_.scalar_type());
  const bool drop = training_ && dropout_ > 0;
  if (!magnitude_.defined()) {
    const at::Tensor lora = drop ? LoraDropoutBranch::apply(xa, a_, b_, dropout_, scaling_)
                                 : at::linear(at::linear(xa, a_), b_) * scaling_;
    return (result + lora).to(result_dtype);
  }

  // DoRA (PEFT's DoraLinearVariant / DoraLinearLayer): the row norm of the adapted weight is a
  // constant (detached), and the low-rank product inside it is detached too.
  at::Tensor scale = (magnitude_ / dora_norm().to(magnitude_.scalar_type())).view({1, -1});
  at::Tensor base_result;
  if (drop) {
    // With active dropout PEFT recomputes W x from the dropped-out input, without the bias.
    xa = at::dropout(xa, dropout_, true);
    base_result = at::linear(xa, base_->dense_weight().to(xa.scalar_type()));
  } else {
    const at::Tensor bias = base_->bias();
    base_result = bias.defined() ? result - bias : result;
  }
  at::Tensor lora = at::linear(at::linear(xa, a_), b_);
  return (result + ((scale - 1) * base_result + scale * lora * scaling_)).to(result_dtype);
}

}  // namespace llmtune::peft
