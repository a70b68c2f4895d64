// A model written as transformers + bitsandbytes save it. The writer needs every tensor's dtype and
// shape before the first byte (the safetensors header comes first), and writes a file's tensors in
// dtype-alignment order (float32 before uint8), so a 4-bit module's absmax/quant_map are written long
// before its packed codes: the small tensors of a quantization are kept until written, the packed
// ones are made again when their turn comes (quantization is deterministic, and checked to be).
#include "llmtune/pipelines/bnb_export.h"

#include <spdlog/spdlog.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/model/family.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;
using Named = std::pair<std::string, at::Tensor>;

bool is_power_of_two(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

// The tensors of one quantized module, made on request and handed out once each.
class ModuleQuantizer {
 public:
  ModuleQuantizer(const MergedWeights& weights, const BnbExportOptions& options) : weights_(weights), options_(options) {}

  std::vector<Named> quantize(const std::string& module) const {
#if defined(__GLIBC__)
    // Earlier layers' dense and packed buffers are free, but small tensors kept for later sit
    // between them on the heap; untrimmed, glibc keeps the freed pages and resident memory grows
    // with the model (measured: +40% of a 16-bit model's size) instead of staying about one layer.
    malloc_trim(0);
#endif
    at::Tensor w = weights_.get(module + ".weight");
    // A Conv1D weight (GPT-2) is quantized as transformers does it: transposed to (out, in) first.
    if (weights_.stored_in_out(module + ".weight")) w = w.t().contiguous();
    // bitsandbytes' Int8Params rounds the weight to float16 before taking row absmax and codes.
    if (options_.type == "int8") return quant::bnb_module_tensors(module, quant::quantize_int8(w.to(at::kHalf)));
    return quant::bnb_module_tensors(
        module, quant::quantize_4bit(w, quant::four_bit_from_name(options_.type), options_.blocksize, options_.double_quant));
  }

  // Quantizes `module` once ahead of writing (its quant_state JSON, whose length depends on the
  // double-quantization offset, is needed for the header); its small tensors are kept for later.
  const at::Tensor& plan(const std::string& module) {
    keep(module, quantize(module), "");
    return planned_state_.at(module);
  }

  at::Tensor take(const std::string& module, const std::string& key) {
    auto& pending = pending_[module];
    if (auto it = pending.find(key); it != pending.end()) {
      at::Tensor t = std::move(it->second);
      pending.erase(it);
      written_.insert(key);
      if (pending.empty()) pending_.erase(module);
      return t;
    }
    return keep(module, quantize(module), key);
  }

 private:
  // Keeps every small tensor not yet written; returns `wanted` ("" for none).
  at::Tensor keep(const std::string& module, std::vector<Named> tensors, const std::string& wanted) {
    at::Tensor out;
    for (auto& [key, t] : tensors) {
      if (key.find(".quant_state.") != std::string::npos) check_state(module, key, t);
      if (key == wanted) out = t;
      else if (key != module + ".weight" && !written_.count(key)) pending_[module][key] = std::move(t);
    }
    if (!wanted.empty()) {
      if (!out.defined()) throw QuantError("bitsandbytes export: module '" + module + "' has no tensor '" + wanted + "' (internal error)");
      written_.insert(wanted);
    }
    return out;
  }

  void check_state(const std::string& module, const std::string& key, const at::Tensor& t) {
    auto [it, first] = planned_state_.emplace(module, t);
    if (!first && !(it->second.sizes() == t.sizes() && it->second.equal(t)))
      throw QuantError("bitsandbytes export: quantizing '" + module + "' twice gave two quant states (" + key +
                       "); the quantizer is not deterministic (internal error)");
  }

  const MergedWeights& weights_;
  const BnbExportOptions& options_;
  std::map<std::string, std::map<std::string, at::Tensor>> pending_;
  std::map<std::string, at::Tensor> planned_state_;
  std::set<std::string> written_;
};

// The keys, dtypes and shapes bitsandbytes saves for a module whose dense weight is `w`
// (FORMATS.md §5.4, §8.1); `state_bytes`: the length of its quant_state JSON.
std::vector<io::TensorSpec> module_specs(const std::string& module, const io::TensorSpec& w, const BnbExportOptions& o,
                                         int64_t state_bytes) {
  const std::string p = module + ".";
  if (o.type == "int8")
    return {{p + "weight", at::kChar, w.shape}, {p + "SCB", at::kFloat, {w.shape[0]}}, {p + "weight_format", at::kByte, {}}};
  const int64_t n = w.shape[0] * w.shape[1], blocks = (n + o.blocksize - 1) / o.blocksize;
  std::vector<io::TensorSpec> specs{{p + "weight", at::kByte, {(n + 1) / 2, 1}},
                                    {p + "weight.absmax", o.double_quant ? at::kByte : at::kFloat, {blocks}},
                                    {p + "weight.quant_map", at::kFloat, {16}}};
  if (o.double_quant) {
    specs.push_back({p + "weight.nested_absmax", at::kFloat, {(blocks + 255) / 256}});
    specs.push_back({p + "weight.nested_quant_map", at::kFloat, {256}});
  }
  specs.push_back({p + "weight.quant_state.bitsandbytes__" + o.type, at::kByte, {state_bytes}});
  return specs;
}

}  // namespace

bool is_bnb_type(const std::string& type) { return type == "nf4" || type == "fp4" || type == "int8"; }

void check_bnb_options(const BnbExportOptions& o) {
  if (!is_bnb_type(o.type)) throw ConfigError("type: '" + o.type + "' is not a bitsandbytes type (nf4, fp4, int8)");
  if (o.type == "int8" && o.double_quant)
    throw ConfigError("double_quant: compresses 4-bit block scales; int8 has none (use it with nf4 or fp4)");
  if (o.blocksize < 32 || o.blocksize > 4096 || !is_power_of_two(o.blocksize))
    throw ConfigError("blocksize: " + std::to_string(o.blocksize) + " is not a power of two in [32, 4096] (bitsandbytes' default is 64)");
  if (o.shard_size_bytes == 0) throw ConfigError("shard_size: must be more than 0 bytes");
}

void write_output_config(const fs::path& model_dir, const fs::path& dir, c10::ScalarType dtype,
                         const std::optional<quant::BnbConfig>& bnb) {
  io::write_config_with_dtype(model_dir, dir, dtype);
  auto config = io::read_json_file<ModelLoadError>(dir / "config.json", "config.json");
  config.erase("quantization_config");
  if (bnb) {
    // transformers writes config.json with sorted keys: keep a sorted file sorted.
    std::vector<std::string> keys;
    for (const auto& [key, value] : config.items()) keys.push_back(key);
    nlohmann::ordered_json q = nlohmann::ordered_json::parse(quant::bnb_config_json(*bnb));
    if (!std::is_sorted(keys.begin(), keys.end())) {
      config["quantization_config"] = q;
    } else {
      nlohmann::ordered_json sorted = nlohmann::ordered_json::object();
      bool placed = false;
      for (const auto& [key, value] : config.items()) {
        if (!placed && key > "quantization_config") sorted["quantization_config"] = q, placed = true;
        sorted[key] = value;
      }
      if (!placed) sorted["quantization_config"] = q;
      config = std::move(sorted);
    }
  }
  io::write_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

BnbExportReport export_bnb(const MergedWeights& weights, const fs::path& dir, const BnbExportOptions& options) {
  const auto t0 = SteadyClock::now();
  check_bnb_options(options);
  const model::ModelConfig& config = weights.config();
  const model::FamilyDesc& family = model::family_for(config.model_type, (weights.model_dir() / "config.json").string());
  BnbExportReport report;

  // What transformers quantizes: the layers' nn.Linear modules. Embeddings, norms and lm_head (its
  // default skip list) stay as they are.
  ModuleQuantizer quantizer(weights, options);
  std::vector<io::TensorSpec> specs;
  std::vector<std::string> module_of;  // per spec: the quantized module it belongs to, "" for as-is
  quant::FourBitState state;
  if (options.type != "int8") state.type = quant::four_bit_from_name(options.type), state.blocksize = options.blocksize;
  for (const auto& name : weights.names()) {
    io::TensorSpec spec = weights.spec(name);
    const bool linear = name.ends_with(".weight") && spec.shape.size() == 2 && at::isFloatingType(spec.dtype) &&
                        (!model::projections_of(family, name).empty() || weights.stored_in_out(name));
    if (!linear) {
      specs.push_back(spec);
      module_of.emplace_back();
      ++report.kept_tensors;
      continue;
    }
    const std::string module = name.substr(0, name.size() - 7);
    if (weights.stored_in_out(name)) std::reverse(spec.shape.begin(), spec.shape.end());  // quantized (out, in)
    int64_t state_bytes = 0;
    if (options.type != "int8" && options.double_quant) {
      state_bytes = quantizer.plan(module).numel();
    } else if (options.type != "int8") {
      state.dtype = spec.dtype, state.shape = spec.shape;
      state_bytes = static_cast<int64_t>(quant::four_bit_state_json(state).size());
    }
    for (auto& s : module_specs(module, spec, options, state_bytes)) {
      specs.push_back(std::move(s));
      module_of.push_back(module);
    }
    ++report.quantized_modules;
  }
  for (const auto& s : specs) report.bytes += s.n_bytes();

  auto produce = [&](size_t i) {
    if (module_of[i].empty()) return weights.get(specs[i].name);
    return quantizer.take(module_of[i], specs[i].name);
  };
  report.files = io::save_sharded_lazy(dir, specs, produce, options.shard_size_bytes);

  quant::BnbConfig bnb;
  bnb.load_in_4bit = options.type != "int8";
  bnb.load_in_8bit = options.type == "int8";
  if (bnb.load_in_4bit) {
    bnb.type = quant::four_bit_from_name(options.type);
    bnb.double_quant = options.double_quant;
    // Computing in the model's own dtype, as QLoRA recipes configure BitsAndBytesConfig.
    bnb.compute_dtype = weights.out_dtype() != at::ScalarType::Undefined
                            ? weights.out_dtype()
                            : io::dtype_from_config_name(config.torch_dtype, at::kFloat);
  }
  report.compute_dtype = io::config_dtype_name(bnb.compute_dtype);
  write_output_config(weights.model_dir(), dir, weights.out_dtype(), bnb);
  report.seconds = seconds_since(t0);
  spdlog::info("bitsandbytes {}{}: {} linears quantized, {} tensors kept as stored, {:.1f} MB in {} file(s), {:.1f} s",
               options.type, options.double_quant ? " (double quant)" : "", report.quantized_modules, report.kept_tensors,
               report.bytes / 1e6, report.files.size(), report.seconds);
  return report;
}

}  // namespace llmtune::pipelines
