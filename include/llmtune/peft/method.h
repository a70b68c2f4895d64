// The adapter-method interface: what finetune trains, what infer/eval load onto a model, what merge
// folds into the base, in PEFT's on-disk format (adapter_config.json with its peft_type, plus
// adapter_model.safetensors with keys "base_model.model.<module>.<tensor>"). LoRA/rsLoRA/DoRA
// implement it (peft/lora.h); a new method (IA3, prompt tuning, ...) implements it and registers.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"

namespace llmtune::config {
class Schema;
class Config;
}  // namespace llmtune::config

namespace llmtune::peft {

// PEFT's key prefix for a causal LM's tensors.
inline constexpr std::string_view kPeftPrefix = "base_model.model.";

// A trainable tensor under its PEFT key ("base_model.model.<module>.lora_A.weight").
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

class AdapterMethod {
 public:
  virtual ~AdapterMethod() = default;
  // PEFT's peft_type ("LORA") and a short description for the log ("DoRA r=16 alpha=32").
  virtual std::string peft_type() const = 0;
  virtual std::string describe() const = 0;
  // Checks the settings; one AdapterError line naming `source` and the key.
  virtual void validate(const std::string& source) const = 0;
  // adapter_config.json's content (PEFT's field set for this peft_type). `modules`: the adapted
  // module paths, for settings PEFT saves expanded (LoRA's "all-linear").
  virtual nlohmann::json config_json(const std::vector<std::string>& modules) const = 0;
  // base_model_name_or_path, recorded in adapter_config.json.
  virtual std::string base_model() const = 0;
  virtual void set_base_model(const std::string& path) = 0;

  // Fresh trainable adapters on `model` (PEFT's initialisation), on the model's device in
  // `param_dtype`; the trainable tensors under their PEFT keys, in model order.
  virtual std::vector<NamedTensor> inject(model::CausalLM& model, at::ScalarType param_dtype) = 0;
  // Training mode (dropout and the like) on or off in every module this method wrapped.
  virtual void set_training(model::CausalLM& model, bool training) const = 0;

  // The module path a saved tensor key ("base_model.model.<module>.<suffix>") belongs to; "" when
  // the key is not one of this method's.
  virtual std::string module_of_key(const std::string& key) const = 0;
  // Checks a saved adapter's tensors (by key) against itself and, per module, the base weight's
  // shape (out, in); AdapterErrors naming `source`, the module and the shapes.
  virtual void check_saved(const std::map<std::string, at::Tensor>& tensors, const std::string& source) const = 0;
  virtual void check_module_fits(const std::map<std::string, at::Tensor>& tensors, const std::string& module,
                                 int64_t out_features, int64_t in_features, const std::string& source) const = 0;
  // Wraps the model's modules with a saved adapter's tensors (already checked); returns how many.
  virtual int64_t apply(model::CausalLM& model, const std::map<std::string, at::Tensor>& tensors,
                        const std::string& source) const = 0;

  // Merging into the base weights (PEFT's merge_and_unload), for methods where that is exact.
  virtual bool mergeable() const { return false; }
  // The merged weight of `module` in float32; w: (out, in) any float dtype.
  virtual at::Tensor merged_weight(const std::map<std::string, at::Tensor>& tensors, const std::string& module,
                                   const at::Tensor& w) const;
  // True when the method's update of `module` is exactly zero (an untrained LoRA: B = 0).
  virtual bool update_is_zero(const std::map<std::string, at::Tensor>& tensors, const std::string& module) const {
    return false;
  }
};

using AdapterMethodPtr = std::shared_ptr<AdapterMethod>;

// A method as the registry knows it: its name in finetune configs (`method: lora`, the `lora.*`
// section), its peft_type, its config keys, and how to build it from a config or adapter_config.json.
struct AdapterMethodType {
  std::string name;
  std::string peft_type;
  std::string help;  // one line for the `method` key's help
  std::function<void(config::Schema& schema)> add_config_keys;
  std::function<AdapterMethodPtr(const config::Config& cfg)> from_config;
  std::function<AdapterMethodPtr(const nlohmann::json& j, const std::string& source)> from_json;
};

// The built-in methods (lora) plus any registered at run time.
void register_adapter_method(AdapterMethodType type);
const AdapterMethodType* find_adapter_method(const std::string& name);
const AdapterMethodType* adapter_method_for_peft_type(const std::string& peft_type);
std::vector<std::string> adapter_method_names();

// A saved adapter directory in memory: its method (from adapter_config.json's peft_type) and the
// memory-mapped tensors by key.
struct SavedAdapter {
  std::filesystem::path dir, weights_path;
  AdapterMethodPtr method;
  std::map<std::string, at::Tensor> tensors;
  std::vector<std::string> modules;  // the module paths it touches, sorted
};

// The adapter directory `dir` names: `dir` itself, or `dir`/adapter when `dir` is a finetune run
// directory (it has no adapter_config.json, its adapter/ has).
std::filesystem::path adapter_dir(const std::filesystem::path& dir);

// The adapter directory `spec` names: a local directory (as adapter_dir), or an adapter's repo id
// in the Hugging Face cache. AdapterErrors that call it an adapter: a file, or nothing there.
std::filesystem::path resolve_adapter_dir(const std::string& spec);

// Reads adapter_config.json + adapter_model.safetensors of `dir` (or of `dir`/adapter, a finetune
// run directory), dispatching on peft_type. Pickled weights, unknown peft_types and keys the
// method does not know are AdapterErrors naming the file and key.
SavedAdapter open_adapter(const std::filesystem::path& dir);

// Loads a saved adapter onto the model (any registered method); returns the wrapped modules.
int64_t apply_adapter(model::CausalLM& model, const std::filesystem::path& adapter_dir);

// Writes adapter_config.json + adapter_model.safetensors as PEFT's save_pretrained does (keys,
// dtypes, metadata {"format":"pt"}); the directory is replaced as a whole or not at all.
void save_adapter(const std::filesystem::path& dir, const AdapterMethod& method, const std::vector<NamedTensor>& params);

// Resume: copies an adapter directory's tensors into `params` (matched by name, shape-checked;
// a missing or unexpected tensor is an error naming it). Nothing is changed unless all fit.
void load_adapter_into(const std::filesystem::path& dir, const std::vector<NamedTensor>& params);

}  // namespace llmtune::peft
