// `llmtune merge`, written out: resolve the adapter and its base, check every output path and every
// adapter tensor against the base, then stream the merged tensors shard by shard into a staging
// directory (plus config, tokenizer and generation config), export GGUF from it if asked, and only
// then move the outputs into place.
#include "llmtune/pipelines/merge.h"

#include <ATen/ops/count_nonzero.h>
#include <ATen/ops/equal.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <nlohmann/json.hpp>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/io/read_file.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;

// "model.layers.10.mlp" after "model.layers.9.mlp": numbers compare by value.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (std::isdigit(static_cast<unsigned char>(a[i])) && std::isdigit(static_cast<unsigned char>(b[j]))) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && std::isdigit(static_cast<unsigned char>(a[i2]))) ++i2;
      while (j2 < b.size() && std::isdigit(static_cast<unsigned char>(b[j2]))) ++j2;
      const std::string na = a.substr(i, i2 - i), nb = b.substr(j, j2 - j);
      if (na.size() != nb.size()) return na.size() < nb.size();
      if (na != nb) return na < nb;
      i = i2, j = j2;
      continue;
    }
    if (a[i] != b[j]) return a[i] < b[j];
    ++i, ++j;
  }
  return a.size() - i < b.size() - j;
}

bool same_or_inside(const fs::path& inner, const fs::path& outer) {
  const fs::path a = fs::weakly_canonical(inner), b = fs::weakly_canonical(outer);
  auto [end_b, end_a] = std::mismatch(b.begin(), b.end(), a.begin(), a.end());
  return end_b == b.end();
}

// Tokenizer files: the adapter directory's when it carries its own (trainers save the tokenizer
// they trained with, chat template included), else the base's. generation_config.json comes from
// the base, or is derived from config.json as transformers derives it.
int copy_tokenizer_and_generation_files(const fs::path& base_dir, const fs::path& adapter_dir, const fs::path& out_dir,
                                        const model::ModelConfig& config) {
  const bool adapter_has_tokenizer =
      !adapter_dir.empty() && (fs::exists(adapter_dir / "tokenizer.json") || fs::exists(adapter_dir / "tokenizer.model"));
  const fs::path from = adapter_has_tokenizer ? adapter_dir : base_dir;
  if (adapter_has_tokenizer) spdlog::info("merge: tokenizer files from the adapter directory {}", adapter_dir.string());
  const int copied = io::copy_tokenizer_files(from, out_dir);
  if (copied == 0) spdlog::warn("merge: {} has no tokenizer files; the merged directory has none either", from.string());
  // The template the adapter was trained with (finetune saves it there when it is not the base's).
  if (!adapter_dir.empty() && from != adapter_dir && fs::exists(adapter_dir / "chat_template.jinja")) {
    io::write_file_atomic(out_dir / "chat_template.jinja", io::read_text_file<AdapterError>(adapter_dir / "chat_template.jinja", "the chat template"));
    if (fs::exists(out_dir / "tokenizer_config.json")) {
      auto tc = io::read_json_file<ModelLoadError>(out_dir / "tokenizer_config.json", "tokenizer_config.json");
      if (tc.contains("chat_template")) {
        tc.erase("chat_template");
        io::write_file_atomic(out_dir / "tokenizer_config.json", tc.dump(2) + "\n");
      }
    }
    spdlog::info("merge: chat template from the adapter directory (the one it was trained with)");
  }
  if (fs::exists(base_dir / "generation_config.json")) {
    io::write_file_atomic(out_dir / "generation_config.json", io::read_text_file<ModelLoadError>(base_dir / "generation_config.json", "generation_config.json"));
  } else {
    nlohmann::ordered_json g{{"_from_model_config", true}};
    if (config.bos_token_id) g["bos_token_id"] = *config.bos_token_id;
    if (config.eos_token_ids.size() == 1) g["eos_token_id"] = config.eos_token_ids[0];
    else if (!config.eos_token_ids.empty()) g["eos_token_id"] = config.eos_token_ids;
    if (config.pad_token_id) g["pad_token_id"] = *config.pad_token_id;
    io::write_file_atomic(out_dir / "generation_config.json", g.dump(2) + "\n");
  }
  return copied;
}

void refuse_existing(const fs::path& path, bool force, const char* what) {
  if (!path.empty() && fs::exists(path) && !force)
    throw ConfigError(path.string() + ": the " + std::string(what) + " already exists (pass --force to replace it)");
}

}  // namespace

MergedWeights::MergedWeights(const fs::path& model_dir, const std::string& adapter, at::ScalarType out_dtype)
    : model_dir_(model_dir), config_(model::ModelConfig::load(model_dir)), checkpoint_(io::WeightFiles::open(model_dir)),
      out_dtype_(out_dtype) {
  auto raw_config = io::read_json_file<ModelLoadError>(model_dir / "config.json", "config.json");
  if (raw_config.contains("quantization_config"))
    throw ModelLoadError((model_dir / "config.json").string() +
                         ": the base is a quantized checkpoint (quantization_config); merge into its full-precision original");
  names_ = checkpoint_.names();
  std::sort(names_.begin(), names_.end(), natural_less);
  if (adapter.empty()) return;
  adapter_ = std::make_unique<peft::SavedAdapter>(peft::open_adapter(adapter));
  if (!adapter_->method->mergeable())
    throw AdapterError(adapter_->dir.string() + ": " + adapter_->method->peft_type() +
                       " adapters cannot be merged into the base weights; load them with --adapter instead");
  for (const auto& path : adapter_->modules) {
    const std::string weight = path + ".weight";
    if (!checkpoint_.contains(weight))
      throw AdapterError(adapter_->weights_path.string() + ": module '" + path + "' has no weight '" + weight + "' in " +
                         model_dir.string() + " (adapter made for another base?)");
    const auto& shape = checkpoint_.info(weight).shape;
    if (shape.size() != 2)
      throw AdapterError(adapter_->weights_path.string() + ": module '" + path + "': the base weight is not a matrix");
    adapter_->method->check_module_fits(adapter_->tensors, path, shape[0], shape[1], adapter_->weights_path.string());
    module_of_weight_[weight] = path;
  }
}

at::ScalarType MergedWeights::dtype_for(const io::TensorInfo& info) const {
  const at::ScalarType stored = io::dtype_from_safetensors(info.dtype);
  if (out_dtype_ == at::ScalarType::Undefined || !at::isFloatingType(stored)) return stored;
  return out_dtype_;
}

uint64_t MergedWeights::n_bytes(const std::string& name) const { return spec(name).n_bytes(); }

io::TensorSpec MergedWeights::spec(const std::string& name) const {
  const auto& info = checkpoint_.info(name);
  return {name, dtype_for(info), info.shape};
}

at::Tensor MergedWeights::get(const std::string& name) const {
  at::Tensor base = checkpoint_.tensor(name);
  const at::ScalarType dtype = dtype_for(checkpoint_.info(name));
  auto it = module_of_weight_.find(name);
  if (it == module_of_weight_.end()) {
    at::Tensor out = base.to(dtype, /*non_blocking=*/false, /*copy=*/true);
    checkpoint_.release(name);
    return out;
  }
  at::Tensor merged = adapter_->method->merged_weight(adapter_->tensors, it->second, base).to(dtype);
  if (at::equal(merged, base.to(dtype))) {
    ++unchanged_;
    if (adapter_->method->update_is_zero(adapter_->tensors, it->second)) ++zero_b_;
  }
  checkpoint_.release(name);
  return merged;
}

MergeReport run_merge(const MergeParams& params) {
  const auto t0 = SteadyClock::now();
  MergeReport report;
  if (params.adapter.empty()) throw ConfigError("adapter: required (a PEFT adapter directory or a finetune run directory)");

  // Inputs: the adapter, then its base (named, or the one the adapter was trained on).
  const peft::SavedAdapter adapter = peft::open_adapter(params.adapter);
  {
    std::vector<std::pair<std::string, const at::Tensor*>> tensors;
    for (const auto& [name, t] : adapter.tensors) tensors.emplace_back(name, &t);
    check_finite(tensors, adapter.weights_path.string(), params.refuse_non_finite);
  }
  std::string model = params.model;
  if (model.empty()) {
    const std::string config_path = (adapter.dir / "adapter_config.json").string();
    model = adapter.method->base_model();
    if (model.empty()) throw ConfigError(config_path + ": names no base_model_name_or_path; pass --model");
    // A relative path was relative to where the adapter was trained: look from the adapter (and its
    // run directory) when it is not found from here.
    std::error_code ec;
    if (fs::path(model).is_relative() && !fs::is_directory(model, ec)) {
      for (const fs::path& from : {adapter.dir, adapter.dir.parent_path()})
        if (!from.empty() && fs::is_directory(from / model, ec)) {
          model = (from / model).lexically_normal().string();
          break;
        }
    }
    try {
      report.model_dir = io::resolve_model_dir(model);
    } catch (const ModelLoadError& e) {
      throw ModelLoadError(config_path + ": base_model_name_or_path: " + e.what() + "; or pass --model BASE");
    }
    spdlog::info("merge: base model {} (from adapter_config.json)", report.model_dir.string());
  } else {
    report.model_dir = io::resolve_model_dir(model);
  }
  report.adapter_dir = adapter.dir;

  // Outputs: where, and refused when they exist (without --force) or would overwrite an input.
  fs::path hf_out = params.output;
  if (hf_out.empty() && params.gguf.empty() && params.lora_gguf.empty()) {
    hf_out = adapter.dir.filename() == "adapter" ? adapter.dir.parent_path() / "merged"
                                                 : fs::path(adapter.dir.string() + "-merged");
  }
  for (const auto& [path, what] : {std::pair{hf_out, "output directory"}, {params.gguf, "GGUF file"},
                                   {params.lora_gguf, "LoRA GGUF file"}}) {
    if (path.empty()) continue;
    refuse_existing(path, params.force, what);
    if (same_or_inside(path, report.model_dir) || same_or_inside(path, adapter.dir) ||
        same_or_inside(report.model_dir, path) || same_or_inside(adapter.dir, path))
      throw ConfigError(path.string() + ": the " + std::string(what) + " would overwrite the base model or the adapter; choose another path");
  }
  if (!hf_out.empty() && !params.gguf.empty() && same_or_inside(params.gguf, hf_out))
    throw ConfigError(params.gguf.string() + ": put the GGUF file outside the output directory " + hf_out.string());

  at::ScalarType out_dtype = at::ScalarType::Undefined;
  if (!params.dtype.empty()) {
    if (params.dtype == "bf16" || params.dtype == "bfloat16") out_dtype = at::kBFloat16;
    else if (params.dtype == "fp16" || params.dtype == "float16") out_dtype = at::kHalf;
    else if (params.dtype == "fp32" || params.dtype == "float32") out_dtype = at::kFloat;
    else throw ConfigError("dtype: '" + params.dtype + "' is not one of bf16, fp16, fp32");
  } else {
    out_dtype = io::dtype_from_config_name(model::ModelConfig::load(report.model_dir).torch_dtype, at::ScalarType::Undefined);
  }

  // Every adapter tensor is checked against the base here, before anything is written.
  MergedWeights weights(report.model_dir, adapter.dir.string(), out_dtype);
  report.adapter_modules = weights.adapter_modules();
  report.tensors = static_cast<int64_t>(weights.names().size());
  report.dtype = out_dtype == at::ScalarType::Undefined ? "as stored" : dtype_name(out_dtype);
  spdlog::info("merge: {} ({} tensors) + {} ({} modules, {}) → {}", report.model_dir.string(), report.tensors,
               adapter.dir.string(), report.adapter_modules, adapter.method->describe(), report.dtype);

  std::unique_ptr<io::AtomicDir> staged;
  if (!hf_out.empty()) {
    const auto t_merge = SteadyClock::now();
    staged = std::make_unique<io::AtomicDir>(hf_out);
    std::vector<io::TensorSpec> specs;
    for (const auto& name : weights.names()) specs.push_back(weights.spec(name));
    auto files = io::save_sharded_lazy(staged->staging(), specs, [&](size_t i) { return weights.get(weights.names()[i]); },
                                       params.shard_size_bytes);
    io::write_config_with_dtype(report.model_dir, staged->staging(), out_dtype);
    copy_tokenizer_and_generation_files(report.model_dir, adapter.dir, staged->staging(), weights.config());
    for (const auto& f : files) report.files.push_back(hf_out / f.filename());
    report.merge_seconds = seconds_since(t_merge);
  }

  if (!params.gguf.empty()) {
    if (staged) {
      // From the staged directory: the GGUF holds exactly the merged weights written above.
      auto checkpoint = io::WeightFiles::open(staged->staging());
      std::vector<std::string> names = checkpoint.names();
      std::sort(names.begin(), names.end(), natural_less);
      auto read = [&](const std::string& n) {
        at::Tensor t = checkpoint.tensor(n).clone();
        checkpoint.release(n);
        return t;
      };
      report.gguf_report = export_gguf(staged->staging(), names, read, params.gguf, params.gguf_options);
    } else {
      const auto t_merge = SteadyClock::now();
      GgufExportOptions options = params.gguf_options;
      if (options.name.empty()) options.name = report.model_dir.filename().string() + "-merged";
      report.gguf_report = export_gguf(report.model_dir, weights.names(), [&](const std::string& n) { return weights.get(n); },
                                       params.gguf, options);
      report.merge_seconds = seconds_since(t_merge);
    }
    report.gguf = params.gguf;
  }
  if (!params.lora_gguf.empty()) {
    export_gguf_lora(report.model_dir, adapter.dir, params.lora_gguf, params.lora_gguf_type);
    report.lora_gguf = params.lora_gguf;
  }
  if (staged) {
    staged->commit();
    report.output = hf_out;
  }

  report.unchanged_modules = weights.unchanged_modules();
  report.zero_b_modules = weights.zero_b_modules();
  if (!hf_out.empty() || !params.gguf.empty()) {
    if (report.adapter_modules > 0 && report.zero_b_modules == report.adapter_modules) {
      spdlog::warn("merge: THE ADAPTER CHANGES NOTHING: every lora_B of {} is zero (an untrained adapter, or one saved "
                   "before the first step); the merged model equals the base", adapter.dir.string());
    } else if (report.adapter_modules > 0 && report.unchanged_modules == report.adapter_modules) {
      spdlog::warn("merge: THE MERGED MODEL EQUALS THE BASE: every adapter delta is below {} precision; merge with --dtype fp32",
                   report.dtype);
    } else if (report.unchanged_modules > 0) {
      spdlog::warn("merge: {} of {} adapted weights came out unchanged in {} ({} with an all-zero lora_B)",
                   report.unchanged_modules, report.adapter_modules, report.dtype, report.zero_b_modules);
    }
  }
  report.seconds = seconds_since(t0);
  report.peak_rss_bytes = static_cast<uint64_t>(ops::peak_rss_bytes());
  return report;
}

}  // namespace llmtune::pipelines
