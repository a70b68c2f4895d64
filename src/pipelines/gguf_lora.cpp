// A PEFT LoRA adapter → llama.cpp's GGUF LoRA adapter (convert_lora_to_gguf.py): lora_a (ne
// [in, r]) and lora_b (ne [r, out]) per base tensor, B's rows permuted like the base's q/k, and one
// adapter.lora.alpha for which llama.cpp's scale alpha / r equals PEFT's scaling for every module.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "gguf_arch.h"
#include "llmtune/io/gguf.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/peft/lora.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace {

using namespace gguf_detail;
using io::GgmlType;

struct LoraPair {
  std::string module;  // "model.layers.0.self_attn.q_proj"
  at::Tensor a, b;     // (r, in), (out, r)
};

GgmlType lora_tensor_type(const std::string& type, at::ScalarType first_dtype, int64_t ne0) {
  std::string t = type;
  for (auto& ch : t) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (t == "auto") t = first_dtype == at::kBFloat16 ? "bf16" : "f16";
  if (t == "f32") return GgmlType::F32;
  if (t == "f16") return GgmlType::F16;
  if (t == "bf16") return GgmlType::BF16;
  if (t == "q8_0") return ne0 % 32 == 0 ? GgmlType::Q8_0 : GgmlType::F16;  // the converter's fallback
  throw QuantError("GGUF LoRA type '" + type + "' is not supported (f32, f16, bf16, q8_0, auto)");
}

}  // namespace

void export_gguf_lora(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                      const std::filesystem::path& out, const std::string& type) {
  const model::ModelConfig c = model::ModelConfig::load(model_dir);
  const model::FamilyDesc& family = gguf_family(c.model_type, (model_dir / "config.json").string());

  const auto config_path = adapter_dir / "adapter_config.json";
  const nlohmann::json j = io::read_json_file<AdapterError, nlohmann::json>(config_path, "adapter_config.json");
  const peft::LoraConfig cfg = peft::LoraConfig::from_json(j, config_path.string());
  if (cfg.use_dora)
    throw AdapterError(config_path.string() + ": DoRA adapters cannot be exported to GGUF (llama.cpp has no DoRA); "
                       "merge the adapter into the model and export the merged model instead");

  const auto weights_path = adapter_dir / "adapter_model.safetensors";
  if (!std::filesystem::exists(weights_path))
    throw AdapterError(weights_path.string() + ": missing (only safetensors adapters are read)");
  auto file = io::SafetensorsFile::open(weights_path);
  const std::string prefix = "base_model.model.";
  std::map<std::string, LoraPair> pairs;
  for (const auto& key : file->names()) {
    if (key.find("lora_magnitude_vector") != std::string::npos)
      throw AdapterError(weights_path.string() + ": '" + key + "' is a DoRA magnitude; llama.cpp has no DoRA");
    const bool is_a = key.ends_with(".lora_A.weight"), is_b = key.ends_with(".lora_B.weight");
    if (!key.starts_with(prefix) || (!is_a && !is_b))
      throw AdapterError(weights_path.string() + ": tensor '" + key +
                         "' cannot go into a GGUF LoRA (only lora_A/lora_B weights of linear layers can)");
    const std::string module = key.substr(prefix.size(), key.size() - prefix.size() - 14);
    LoraPair& p = pairs[module];
    p.module = module;
    (is_a ? p.a : p.b) = file->tensor(key);
  }
  if (pairs.empty()) throw AdapterError(weights_path.string() + ": no LoRA tensors");

  // llama.cpp scales each tensor by alpha / r with r = lora_a's rank: one alpha must fit them all.
  std::optional<double> alpha;
  struct Out { std::string name; at::Tensor t; };
  std::vector<Out> outs;
  at::ScalarType first_dtype = pairs.begin()->second.a.defined() ? pairs.begin()->second.a.scalar_type() : at::kFloat;
  for (auto& [module, p] : pairs) {
    if (!p.a.defined() || !p.b.defined())
      throw AdapterError(weights_path.string() + ": module '" + module + "' lacks lora_" + (p.a.defined() ? "B" : "A"));
    const std::string base = model::hf_to_gguf_name(family, module + ".weight");
    if (base.empty()) throw AdapterError(weights_path.string() + ": module '" + module + "' has no GGUF counterpart");
    if (base == "output.weight" && (c.tie_word_embeddings || family.gguf.drop_lm_head))
      throw AdapterError(weights_path.string() + ": the adapter targets lm_head, which the GGUF model does not have (tied embeddings)");
    const int64_t r = p.a.size(0);
    if (p.a.dim() != 2 || p.b.dim() != 2 || p.b.size(1) != r)
      throw AdapterError(weights_path.string() + ": module '" + module + "': lora_A " + c10::str(p.a.sizes()) +
                         " and lora_B " + c10::str(p.b.sizes()) + " do not fit together");
    const double a_gguf = cfg.scaling_for(module, r) * static_cast<double>(r);
    if (alpha && std::abs(*alpha - a_gguf) > 1e-6 * std::abs(*alpha))
      throw AdapterError(config_path.string() + ": modules need different alpha/r scales (" + std::to_string(*alpha) + " vs " +
                         std::to_string(a_gguf) + " for '" + module + "'); a GGUF LoRA has one adapter.lora.alpha");
    alpha = a_gguf;
    at::Tensor a = p.a, b = p.b;
    if (a.scalar_type() != at::kHalf && a.scalar_type() != at::kFloat) a = a.to(at::kFloat);
    if (b.scalar_type() != at::kHalf && b.scalar_type() != at::kFloat) b = b.to(at::kFloat);
    b = to_gguf_layout(family, c, module + ".weight", b);
    outs.push_back({base + ".lora_a", a});
    outs.push_back({base + ".lora_b", b});
  }
  std::stable_sort(outs.begin(), outs.end(), [](const Out& x, const Out& y) {
    const std::string bx = x.name.substr(0, x.name.size() - 7), by = y.name.substr(0, y.name.size() - 7);
    return bx != by ? gguf_name_less(bx, by) : x.name < y.name;
  });

  if (out.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(out.parent_path(), ec);
    if (ec) throw IoError(out.parent_path().string() + ": cannot create the output directory: " + ec.message());
  }
  io::GgufWriter writer(out);
  writer.add_string("general.architecture", family.gguf.arch);
  writer.add_string("general.type", "adapter");
  writer.add_string("adapter.type", "lora");
  const std::string name = adapter_dir.filename().empty() ? adapter_dir.parent_path().filename().string()
                                                          : adapter_dir.filename().string();
  writer.add_string("general.name", name);
  writer.add_f32("adapter.lora.alpha", static_cast<float>(*alpha));
  writer.add_u32("general.quantization_version", 2);
  std::vector<GgmlType> types;
  for (const auto& o : outs) {
    types.push_back(lora_tensor_type(type, first_dtype, o.t.size(1)));
    writer.add_tensor_info(o.name, {o.t.size(1), o.t.size(0)}, types.back());
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    at::Tensor t = outs[i].t.contiguous();
    at::Tensor bytes = types[i] == GgmlType::F32   ? t.to(at::kFloat).contiguous()
                       : types[i] == GgmlType::F16 ? t.to(at::kHalf).contiguous()
                                                   : quant::quantize(t.to(at::kFloat), types[i]);
    writer.write_tensor(bytes.data_ptr(), bytes.numel() * bytes.element_size());
  }
  writer.commit();
  spdlog::info("GGUF LoRA: {} ({} module(s), alpha {} for llama.cpp's alpha/r scale)", out.string(), pairs.size(), *alpha);
}

}  // namespace llmtune::pipelines
