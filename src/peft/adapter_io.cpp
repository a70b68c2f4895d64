// Loading PEFT adapter directories onto a model: the config, then every LoRA tensor by its key,
// checked against the module it wraps.
#include <spdlog/spdlog.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "llmtune/io/safetensors.h"
#include "llmtune/peft/lora.h"
#include "llmtune/util/error.h"

namespace llmtune::peft {
namespace {

constexpr std::string_view kPrefix = "base_model.model.";

struct ModuleTensors {
  at::Tensor a, b, magnitude;
};

}  // namespace

int64_t apply_adapter(model::CausalLM& model, const std::filesystem::path& dir) {
  auto config_path = dir / "adapter_config.json";
  std::ifstream in(config_path);
  if (!in) throw AdapterError(config_path.string() + ": cannot read adapter_config.json (is " + dir.string() + " a PEFT adapter directory?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw AdapterError(config_path.string() + ": invalid JSON (" + e.what() + ")");
  }
  LoraConfig config = LoraConfig::from_json(j, config_path.string());

  auto weights_path = dir / "adapter_model.safetensors";
  if (!std::filesystem::exists(weights_path)) {
    if (std::filesystem::exists(dir / "adapter_model.bin"))
      throw AdapterError((dir / "adapter_model.bin").string() + ": pickled adapters are refused (loading them can run code); "
                         "re-save it with PEFT's save_pretrained(..., safe_serialization=True)");
    throw AdapterError(weights_path.string() + ": missing");
  }
  auto file = io::SafetensorsFile::open(weights_path);

  // Group the tensors by module path.
  std::map<std::string, ModuleTensors> modules;
  for (const auto& key : file->names()) {
    if (!key.starts_with(kPrefix))
      throw AdapterError(weights_path.string() + ": tensor '" + key + "' does not start with '" + std::string(kPrefix) + "' (not a PEFT adapter?)");
    std::string rest = key.substr(kPrefix.size());
    auto take = [&](std::string_view suffix) {
      if (!rest.ends_with(suffix)) return false;
      rest.resize(rest.size() - suffix.size());
      return true;
    };
    if (take(".lora_A.weight")) modules[rest].a = file->tensor(key);
    else if (take(".lora_B.weight")) modules[rest].b = file->tensor(key);
    else if (take(".lora_magnitude_vector.weight") || take(".lora_magnitude_vector")) modules[rest].magnitude = file->tensor(key);
    else throw AdapterError(weights_path.string() + ": tensor '" + key + "' is not supported (embedding LoRA, lora_bias and saved modules are not yet)");
  }
  if (modules.empty()) throw AdapterError(weights_path.string() + ": holds no LoRA tensors");

  std::map<std::string, model::LinearPtr*> slots;
  for (auto& [name, slot] : model.named_linears()) slots[name] = slot;
  const auto device = model.device();
  const auto dtype = model.dtype();
  for (auto& [path, t] : modules) {
    auto it = slots.find(path);
    if (it == slots.end())
      throw AdapterError(weights_path.string() + ": module '" + path + "' does not exist in this model (adapter made for another base?)");
    if (!t.a.defined() || !t.b.defined())
      throw AdapterError(weights_path.string() + ": module '" + path + "' lacks lora_A or lora_B");
    if (config.use_dora != t.magnitude.defined())
      throw AdapterError(weights_path.string() + ": module '" + path + "': use_dora is " + (config.use_dora ? "true" : "false") +
                         " but the magnitude vector is " + (t.magnitude.defined() ? "present" : "absent"));
    model::Linear& base = **it->second;
    const int64_t r = t.a.size(0);
    if (t.a.dim() != 2 || t.b.dim() != 2 || t.a.size(1) != base.in_features() || t.b.size(0) != base.out_features() ||
        t.b.size(1) != r || (t.magnitude.defined() && (t.magnitude.dim() != 1 || t.magnitude.size(0) != base.out_features()))) {
      throw AdapterError(weights_path.string() + ": module '" + path + "': lora_A " + c10::str(t.a.sizes()) + " / lora_B " +
                         c10::str(t.b.sizes()) + " do not fit the base layer [" + std::to_string(base.out_features()) + ", " +
                         std::to_string(base.in_features()) + "] (adapter made for another base?)");
    }
    auto cast = [&](const at::Tensor& x) { return x.defined() ? x.to(device, dtype) : x; };
    *it->second = std::make_shared<LoraLinear>(*it->second, cast(t.a), cast(t.b), config.scaling_for(path, r), cast(t.magnitude));
  }
  spdlog::info("adapter {}: {} module(s), {}{}", dir.string(), modules.size(),
               config.use_dora ? "DoRA" : "LoRA", config.use_rslora ? " (rsLoRA scaling)" : "");
  return static_cast<int64_t>(modules.size());
}

}  // namespace llmtune::peft
