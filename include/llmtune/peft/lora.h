// LoRA, rsLoRA and DoRA around any Linear (FORMATS.md §4), and adapters in PEFT's on-disk format:
// adapter_config.json + adapter_model.safetensors with keys base_model.model.<module>.lora_A.weight.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/model/linear.h"

namespace llmtune::peft {

struct LoraConfig {
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0.0;
  bool use_rslora = false;
  bool use_dora = false;
  std::vector<std::string> target_modules;  // names matched as module-path suffixes
  std::string target_regex;                  // or one regex matched against the whole path
  std::string bias = "none";                 // none | all | lora_only
  std::map<std::string, int64_t> rank_pattern;  // per-module overrides (PEFT's pattern keys)
  std::map<std::string, double> alpha_pattern;
  std::string base_model_name_or_path;

  // Reads PEFT's adapter_config.json content; unsupported settings are AdapterErrors naming `source`.
  static LoraConfig from_json(const nlohmann::json& j, const std::string& source);
  // alpha / r (or alpha / sqrt(r) with rsLoRA) for a module, honouring the patterns.
  double scaling_for(const std::string& module_path, int64_t r) const;
};

// y = base(x) + scaling · B(A(x)); with DoRA the direction is renormalized by the magnitude m:
// y = base(x) + (m/‖W + s·BA‖ − 1)·(W x) + (m/‖W + s·BA‖)·s·B(A(x)), the norm taken per output row.
class LoraLinear : public model::Linear {
 public:
  // base must be a DenseLinear for DoRA (the norm needs W). a: (r, in), b: (out, r), magnitude: (out,).
  LoraLinear(model::LinearPtr base, at::Tensor a, at::Tensor b, double scaling, at::Tensor magnitude = {});
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  std::vector<at::Tensor> tensors() const override;

 private:
  model::LinearPtr base_;
  at::Tensor a_, b_, magnitude_;
  double scaling_;
};

// Loads a PEFT LoRA adapter directory and wraps the model's matching linears. Shapes, unknown
// modules and unsupported features (embedding LoRA, modules_to_save, lora_bias) are AdapterErrors
// naming the tensor or key. Returns the number of wrapped modules.
int64_t apply_adapter(model::CausalLM& model, const std::filesystem::path& adapter_dir);

}  // namespace llmtune::peft
