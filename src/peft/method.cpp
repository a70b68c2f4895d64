// The adapter-method registry and what every method shares: opening a saved PEFT adapter directory
// (dispatching on peft_type), applying it to a model, saving trainable tensors as save_pretrained
// does, and reading a saved adapter back into trainable tensors to resume.
#include "llmtune/peft/method.h"

#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>
#include <set>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/util/error.h"
#include "llmtune/util/registry.h"
#include "methods.h"

namespace llmtune::peft {
namespace {

Registry<AdapterMethodType>& registry() {
  static auto* r = new Registry<AdapterMethodType>({lora_method_type()});
  return *r;
}

const auto kAll = [](const AdapterMethodType&) { return true; };

}  // namespace

at::Tensor AdapterMethod::merged_weight(const std::map<std::string, at::Tensor>&, const std::string& module,
                                        const at::Tensor&) const {
  throw AdapterError(peft_type() + " adapters cannot be merged into the base weights (module '" + module + "')");
}

void register_adapter_method(AdapterMethodType type) {
  registry().put(std::move(type), [](const AdapterMethodType& t) { return t.name; });
}

const AdapterMethodType* find_adapter_method(const std::string& name) {
  return registry().find([&](const AdapterMethodType& t) { return t.name == name; });
}

const AdapterMethodType* adapter_method_for_peft_type(const std::string& peft_type) {
  return registry().find([&](const AdapterMethodType& t) { return t.peft_type == peft_type; });
}

std::vector<std::string> adapter_method_names() {
  return registry().names(kAll, [](const AdapterMethodType& t) { return t.name; });
}

std::filesystem::path resolve_adapter_dir(const std::string& spec) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(spec, ec)) return adapter_dir(spec);
  if (fs::exists(spec, ec))
    throw AdapterError(spec + ": is a file, not an adapter directory (give the directory holding adapter_config.json "
                       "and adapter_model.safetensors, or a finetune run directory)");
  try {
    return adapter_dir(io::resolve_model_dir(spec));  // an adapter in the Hugging Face cache
  } catch (const ModelLoadError&) {
    throw AdapterError(spec + ": no such adapter directory (give a PEFT adapter directory, a finetune run directory, "
                       "or the repo id of an adapter in the Hugging Face cache)");
  }
}

std::filesystem::path adapter_dir(const std::filesystem::path& dir) {
  // A finetune run directory holds its final adapter under adapter/.
  if (!std::filesystem::exists(dir / "adapter_config.json") && std::filesystem::exists(dir / "adapter" / "adapter_config.json"))
    return dir / "adapter";
  return dir;
}

SavedAdapter open_adapter(const std::filesystem::path& dir_in) {
  SavedAdapter adapter;
  adapter.dir = resolve_adapter_dir(dir_in.string());
  const auto& dir = adapter.dir;
  const auto config_path = (dir / "adapter_config.json").string();
  if (!std::filesystem::exists(dir / "adapter_config.json"))
    throw AdapterError(config_path + ": missing (is " + dir.string() + " a PEFT adapter directory?)");
  const auto j = io::read_json_file<AdapterError, nlohmann::json>(dir / "adapter_config.json", "adapter_config.json");
  const auto type_it = j.find("peft_type");
  const std::string peft_type = type_it != j.end() && type_it->is_string() ? type_it->get<std::string>() : "LORA";
  const AdapterMethodType* type = adapter_method_for_peft_type(peft_type);
  if (!type) {
    std::string names;
    for (const auto& t : registry().names(kAll, [](const AdapterMethodType& t) { return t.peft_type; }))
      names += (names.empty() ? "" : ", ") + t;
    throw AdapterError(config_path + ": peft_type '" + peft_type + "' is not supported (supported: " + names + ")");
  }
  adapter.method = type->from_json(j, config_path);

  adapter.weights_path = dir / "adapter_model.safetensors";
  const auto& weights_path = adapter.weights_path;
  if (!std::filesystem::exists(weights_path)) {
    if (std::filesystem::exists(dir / "adapter_model.bin"))
      throw AdapterError((dir / "adapter_model.bin").string() + ": pickled adapters are refused (loading them can run code); "
                         "re-save it with PEFT's save_pretrained(..., safe_serialization=True)");
    throw AdapterError(weights_path.string() + ": missing");
  }
  auto file = io::SafetensorsFile::open(weights_path);
  std::set<std::string> modules;
  for (const auto& key : file->names()) {
    if (!key.starts_with(kPeftPrefix))
      throw AdapterError(weights_path.string() + ": tensor '" + key + "' does not start with '" + std::string(kPeftPrefix) +
                         "' (not a PEFT adapter?)");
    const std::string module = adapter.method->module_of_key(key);
    if (module.empty())
      throw AdapterError(weights_path.string() + ": tensor '" + key + "' is not a " + peft_type +
                         " tensor llmtune supports (embedding adapters, biases and saved modules are not yet)");
    modules.insert(module);
    adapter.tensors[key] = file->tensor(key);
  }
  if (adapter.tensors.empty()) throw AdapterError(weights_path.string() + ": holds no adapter tensors");
  adapter.modules.assign(modules.begin(), modules.end());
  adapter.method->check_saved(adapter.tensors, weights_path.string());
  return adapter;
}

int64_t apply_adapter(model::CausalLM& model, const std::filesystem::path& dir) {
  SavedAdapter adapter = open_adapter(dir);
  const std::string source = adapter.weights_path.string();
  std::map<std::string, model::LinearPtr*> slots;
  for (auto& [name, slot] : model.named_linears()) slots[name] = slot;
  for (const auto& module : adapter.modules) {
    auto it = slots.find(module);
    if (it == slots.end())
      throw AdapterError(source + ": module '" + module + "' does not exist in this model (adapter made for another base?)");
    adapter.method->check_module_fits(adapter.tensors, module, (*it->second)->out_features(), (*it->second)->in_features(),
                                      source);
  }
  const int64_t n = adapter.method->apply(model, adapter.tensors, source);
  spdlog::info("adapter {}: {} module(s), {}", adapter.dir.string(), n, adapter.method->describe());
  return n;
}

void save_adapter(const std::filesystem::path& dir, const AdapterMethod& method, const std::vector<NamedTensor>& params) {
  method.validate("adapter settings");
  if (params.empty()) throw AdapterError(dir.string() + ": no adapter tensors to save (inject the adapter first)");
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::set<std::string> names, modules;
  for (const auto& p : params) {
    const std::string module = p.name.starts_with(kPeftPrefix) ? method.module_of_key(p.name) : "";
    if (module.empty())
      throw AdapterError("save_adapter: tensor '" + p.name + "' is not a PEFT " + method.peft_type() + " key (" +
                         std::string(kPeftPrefix) + "<module>.<tensor>)");
    if (!p.tensor.defined()) throw AdapterError("save_adapter: tensor '" + p.name + "' is undefined");
    if (!names.insert(p.name).second) throw AdapterError("save_adapter: tensor '" + p.name + "' is given twice");
    modules.insert(module);
    tensors.emplace_back(p.name, p.tensor.detach().to(c10::kCPU).contiguous());
  }
  io::AtomicDir out(dir);
  io::write_file_atomic(out.staging() / "adapter_config.json",
                        method.config_json(std::vector<std::string>(modules.begin(), modules.end())).dump(2));
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
    if (file->contains(name + ".weight")) return name + ".weight";
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
