// PEFT adapter directories: loading one onto a model (the config, then every LoRA tensor by its key,
// checked against the module it wraps), saving trainable tensors as save_pretrained does, and
// reading a saved adapter back into trainable tensors to resume.
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/peft/lora.h"
#include "llmtune/util/error.h"

namespace llmtune::peft {
namespace {

constexpr std::string_view kPrefix = "base_model.model.";

}  // namespace

PeftAdapter read_adapter(const std::filesystem::path& dir_in) {
  PeftAdapter adapter;
  adapter.dir = dir_in;
  // A finetune run directory holds its final adapter under adapter/.
  if (!std::filesystem::exists(dir_in / "adapter_config.json") && std::filesystem::exists(dir_in / "adapter" / "adapter_config.json"))
    adapter.dir = dir_in / "adapter";
  const auto& dir = adapter.dir;
  auto config_path = dir / "adapter_config.json";
  std::ifstream in(config_path);
  if (!in) throw AdapterError(config_path.string() + ": cannot read adapter_config.json (is " + dir.string() + " a PEFT adapter directory?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw AdapterError(config_path.string() + ": invalid JSON (" + e.what() + ")");
  }
  adapter.config = LoraConfig::from_json(j, config_path.string());

  adapter.weights_path = dir / "adapter_model.safetensors";
  const auto& weights_path = adapter.weights_path;
  if (!std::filesystem::exists(weights_path)) {
    if (std::filesystem::exists(dir / "adapter_model.bin"))
      throw AdapterError((dir / "adapter_model.bin").string() + ": pickled adapters are refused (loading them can run code); "
                         "re-save it with PEFT's save_pretrained(..., safe_serialization=True)");
    throw AdapterError(weights_path.string() + ": missing");
  }
  auto file = io::SafetensorsFile::open(weights_path);

  // Group the tensors by module path.
  auto& modules = adapter.modules;
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
  for (const auto& [path, t] : modules) {
    if (!t.a.defined() || !t.b.defined())
      throw AdapterError(weights_path.string() + ": module '" + path + "' lacks lora_A or lora_B");
    if (adapter.config.use_dora != t.magnitude.defined())
      throw AdapterError(weights_path.string() + ": module '" + path + "': use_dora is " + (adapter.config.use_dora ? "true" : "false") +
                         " but the magnitude vector is " + (t.magnitude.defined() ? "present" : "absent"));
  }
  return adapter;
}

void check_adapter_module(const PeftAdapter& adapter, const std::string& path, int64_t out_features, int64_t in_features) {
  const auto& t = adapter.modules.at(path);
  const int64_t r = t.a.size(0);
  if (t.a.dim() != 2 || t.b.dim() != 2 || t.a.size(1) != in_features || t.b.size(0) != out_features || t.b.size(1) != r ||
      (t.magnitude.defined() && (t.magnitude.dim() != 1 || t.magnitude.size(0) != out_features))) {
    throw AdapterError(adapter.weights_path.string() + ": module '" + path + "': lora_A " + c10::str(t.a.sizes()) + " / lora_B " +
                       c10::str(t.b.sizes()) + " do not fit the base layer [" + std::to_string(out_features) + ", " +
                       std::to_string(in_features) + "] (adapter made for another base?)");
  }
}

int64_t apply_adapter(model::CausalLM& model, const std::filesystem::path& dir_in) {
  PeftAdapter adapter = read_adapter(dir_in);
  const auto& config = adapter.config;
  const auto& dir = adapter.dir;
  const auto& modules = adapter.modules;
  std::map<std::string, model::LinearPtr*> slots;
  for (auto& [name, slot] : model.named_linears()) slots[name] = slot;
  const auto device = model.device();
  const auto dtype = model.dtype();
  for (auto& [path, t] : modules) {
    auto it = slots.find(path);
    if (it == slots.end())
      throw AdapterError(adapter.weights_path.string() + ": module '" + path + "' does not exist in this model (adapter made for another base?)");
    model::Linear& base = **it->second;
    check_adapter_module(adapter, path, base.out_features(), base.in_features());
    auto cast = [&](const at::Tensor& x) { return x.defined() ? x.to(device, dtype) : x; };
    *it->second = std::make_shared<LoraLinear>(*it->second, cast(t.a), cast(t.b), config.scaling_for(path, t.a.size(0)), cast(t.magnitude));
  }
  spdlog::info("adapter {}: {} module(s), {}{}", dir.string(), modules.size(),
               config.use_dora ? "DoRA" : "LoRA", config.use_rslora ? " (rsLoRA scaling)" : "");
  return static_cast<int64_t>(modules.size());
}

void save_adapter(const std::filesystem::path& dir, const LoraConfig& config, const std::vector<NamedTensor>& params) {
  config.validate();
  if (params.empty()) throw AdapterError(dir.string() + ": no adapter tensors to save (call inject_lora first)");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::set<std::string> names, modules;
  for (const auto& p : params) {
    std::string module;
    if (p.name.starts_with(kPrefix)) {
      for (std::string_view suffix : {".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"}) {
        if (p.name.ends_with(suffix)) {
          module = p.name.substr(kPrefix.size(), p.name.size() - kPrefix.size() - suffix.size());
          break;
        }
      }
    }
    if (module.empty())
      throw AdapterError("save_adapter: tensor '" + p.name + "' is not a PEFT LoRA key (base_model.model.<module>.lora_A.weight, "
                         ".lora_B.weight or .lora_magnitude_vector)");
    if (!p.tensor.defined()) throw AdapterError("save_adapter: tensor '" + p.name + "' is undefined");
    if (!names.insert(p.name).second) throw AdapterError("save_adapter: tensor '" + p.name + "' is given twice");
    modules.insert(module);
    tensors.emplace_back(p.name, p.tensor.detach().to(c10::kCPU).contiguous());
  }
  // PEFT saves the expanded module list for "all-linear".
  LoraConfig saved = config;
  if (config.is_all_linear()) {
    saved.target_regex.clear();
    saved.target_modules.assign(modules.begin(), modules.end());
  }
  io::AtomicDir out(dir);
  io::write_file_atomic(out.staging() / "adapter_config.json", saved.to_json().dump(2));
  io::save_safetensors(out.staging() / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  out.commit();
}

void load_adapter_into(const std::filesystem::path& dir, const std::vector<NamedTensor>& params) {
  auto weights_path = dir / "adapter_model.safetensors";
  if (!std::filesystem::exists(weights_path))
    throw AdapterError(weights_path.string() + ": missing (is " + dir.string() + " an adapter saved by save_adapter or PEFT?)");
  auto file = io::SafetensorsFile::open(weights_path);
  // PEFT files name the DoRA magnitude without ".weight"; older ones with it.
  auto find_key = [&](const std::string& name) -> std::string {
    if (file->contains(name)) return name;
    if (name.ends_with(".lora_magnitude_vector") && file->contains(name + ".weight")) return name + ".weight";
    return "";
  };
  std::set<std::string> used;
  std::vector<at::Tensor> loaded;
  for (const auto& p : params) {
    std::string key = find_key(p.name);
    if (key.empty())
      throw AdapterError(weights_path.string() + ": tensor '" + p.name + "' is missing (adapter saved with another config or model?)");
    at::Tensor t = file->tensor(key);
    if (t.sizes() != p.tensor.sizes())
      throw AdapterError(weights_path.string() + ": tensor '" + key + "' has shape " + c10::str(t.sizes()) + ", expected " +
                         c10::str(p.tensor.sizes()) + " (adapter saved with another r or model?)");
    used.insert(key);
    loaded.push_back(t);
  }
  for (const auto& key : file->names())
    if (!used.count(key))
      throw AdapterError(weights_path.string() + ": tensor '" + key + "' is not a trainable tensor of this run (adapter saved with another config?)");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].tensor.copy_(loaded[i]);
  spdlog::info("adapter {}: {} tensor(s) loaded", dir.string(), params.size());
}

}  // namespace llmtune::peft
