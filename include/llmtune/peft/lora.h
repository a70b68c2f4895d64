// LoRA, rsLoRA and DoRA around any Linear (FORMATS.md §4), behind the adapter-method interface
// (peft/method.h, peft_type LORA): fresh trainable adapters injected with PEFT's default
// initialisation, and adapters in PEFT's on-disk format (keys base_model.model.<module>.lora_A.weight).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/model/linear.h"
#include "llmtune/peft/method.h"

namespace llmtune::peft {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;
  // The base layers store their weight (in, out) (GPT-2's Conv1D). For PEFT it transposes ΔW on merge;
  // our linears always hold (out, in), so it only records what the base is: inject sets it from the
  // model's family, as PEFT corrects it for the layer it wraps.
  bool fan_in_fan_out = false;
  // Module names matched as module-path suffixes (PEFT's list form). {"all-linear"} (or
  // target_regex "all-linear") means every linear except lm_head, as PEFT's shorthand.
  std::vector<std::string> target_modules;
  std::string target_regex;                  // or one regex matched against the whole path
  std::vector<std::string> exclude_modules;  // suffix names never targeted
  std::string exclude_regex;                 // or a regex over whole paths
  std::vector<int64_t> layers_to_transform;  // only these layer indices (list targets only, as PEFT)
  std::vector<std::string> layers_pattern;   // the container name before the index ("layers")
  std::string init_lora_weights = "true";    // true (kaiming A, zero B) | gaussian | false (both random)
  std::string bias = "none";                 // none | all | lora_only
  std::map<std::string, int64_t> rank_pattern;  // per-module overrides (PEFT's pattern keys)
  std::map<std::string, double> alpha_pattern;
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";
  // Where these settings came from, named in pattern errors: the adapter_config.json path
  // (from_json), or empty for finetune's lora.* keys.
  std::string source;

  // Reads PEFT's adapter_config.json content; unsupported settings are AdapterErrors naming `source`.
  static LoraConfig from_json(const nlohmann::json& j, const std::string& source);
  // adapter_config.json content with every field PEFT 0.21 writes, valued as PEFT writes them
  // (inference_mode true, sets as sorted lists). Dump with dump(2): PEFT writes indent=2, sorted keys.
  nlohmann::json to_json() const;
  // r, lora_alpha, lora_dropout, bias, rank/alpha patterns, and that every regular expression
  // (target/exclude regex, pattern keys, layers_pattern) compiles: throws one AdapterError line
  // naming `source` (where(key) for the regexes) and the key.
  void validate(const std::string& source = "LoRA config") const;
  bool is_all_linear() const;
  // How errors name a key: "<source>: rank_pattern", or "lora.target_modules" without a source.
  std::string where(const std::string& key) const;
  // The rank of a module (rank_pattern or r) and alpha / r (alpha / sqrt(r) with rsLoRA). A pattern
  // key that backtracks without end is an AdapterError naming it.
  int64_t rank_for(const std::string& module_path) const;
  double scaling_for(const std::string& module_path, int64_t r) const;
};

// y = base(x) + scaling · B(A(dropout(x))); with DoRA the direction is renormalized by the magnitude m:
// y = base(x) + (m/‖W + s·BA‖ − 1)·(W x) + (m/‖W + s·BA‖)·s·B(A(x)), the norm taken per output row and
// detached from the graph (DoRA paper §4.3). As PEFT: x is cast to the adapter dtype, the sum back to
// the base dtype; with DoRA and active dropout, W x is recomputed from the dropped-out x (no bias).
class LoraLinear : public model::Linear {
 public:
  // a: (r, in), b: (out, r), magnitude: (out,). DoRA reads the base's dense_weight() for its norm.
  LoraLinear(model::LinearPtr base, at::Tensor a, at::Tensor b, double scaling, at::Tensor magnitude = {},
             double dropout = 0.0);
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  std::vector<at::Tensor> tensors() const override;
  at::Tensor dense_weight() const override { return base_->dense_weight(); }
  at::Tensor bias() const override { return base_->bias(); }

  const model::LinearPtr& base() const { return base_; }
  const at::Tensor& lora_a() const { return a_; }
  const at::Tensor& lora_b() const { return b_; }
  const at::Tensor& magnitude() const { return magnitude_; }  // undefined without DoRA
  double scaling() const { return scaling_; }
  void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }

 private:
  // DoRA: ‖W + s·B·A‖ per output row, fp32, detached (see lora.cpp).
  at::Tensor dora_norm() const;

  model::LinearPtr base_;
  at::Tensor a_, b_, magnitude_;
  mutable at::Tensor w_norm_sq_;  // DoRA: ‖W‖² per row, computed once
  double scaling_;
  double dropout_;
  bool training_ = false;
};

// The linear module paths the config targets, in model order (PEFT's matching: list names by suffix,
// a regex over the whole path, or "all-linear"; exclude_modules and layers_to_transform honoured).
// Throws an AdapterError listing the model's linear module names when nothing matches.
std::vector<std::string> select_target_modules(model::CausalLM& model, const LoraConfig& config);

// Wraps the targeted linears with fresh LoRA / rsLoRA / DoRA layers initialised as PEFT does
// (init_lora_weights=true: A kaiming-uniform(a=√5), B zero; DoRA magnitude = row norms of W), on
// the model's device in `param_dtype`. Returns the trainable tensors (requires_grad) under their
// PEFT keys: per module in model order, lora_A.weight, lora_B.weight[, lora_magnitude_vector].
std::vector<NamedTensor> inject_lora(model::CausalLM& model, const LoraConfig& config,
                                     at::ScalarType param_dtype = at::kFloat);

// Training mode turns on LoRA dropout (applied to x before lora_A, as PEFT) in every LoraLinear.
void set_training(model::CausalLM& model, bool training);

// LoRA's method object (the interface's implementation) for these settings.
AdapterMethodPtr make_lora_method(const LoraConfig& config);

// save_adapter for LoRA settings (see peft/method.h).
void save_adapter(const std::filesystem::path& dir, const LoraConfig& config, const std::vector<NamedTensor>& params);

// A PEFT adapter directory in memory: its config and, per module path
// ("model.layers.0.self_attn.q_proj"), the memory-mapped tensors.
struct AdapterModuleTensors {
  at::Tensor a, b;       // lora_A (r, in), lora_B (out, r)
  at::Tensor magnitude;  // (out,), DoRA only
};
struct PeftAdapter {
  std::filesystem::path dir, weights_path;
  LoraConfig config;
  std::map<std::string, AdapterModuleTensors> modules;
};

// Reads adapter_config.json + adapter_model.safetensors of `dir` (or of `dir`/adapter, a finetune
// run directory). Pickled weights, foreign keys, a module without lora_A/lora_B, a magnitude
// vector that use_dora does not match: AdapterErrors naming the file and tensor.
PeftAdapter read_adapter(const std::filesystem::path& dir);

// Checks a module's tensors against a base weight of shape (out, in); an AdapterError naming the
// module and the shapes otherwise ("adapter made for another base?").
void check_adapter_module(const PeftAdapter& adapter, const std::string& module_path, int64_t out_features,
                          int64_t in_features);

// The merged weight of one module, in float32: W + s·(B·A) (LoRA, rsLoRA), and with DoRA
// m/‖W + s·B·A‖ · (W + s·B·A), the norm per output row, as PEFT's merge_and_unload computes it.
// w: (out, in) any float dtype.
at::Tensor merge_lora_weight(const at::Tensor& w, const AdapterModuleTensors& module, double scaling);

}  // namespace llmtune::peft
