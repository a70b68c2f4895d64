// `llmtune merge`, written out: resolve the adapter and its base (dense, or bitsandbytes 4-bit/8-bit:
// dequantized), check every output path and every adapter tensor against the base, then stream the
// merged tensors shard by shard into a staging directory (16-bit, or re-quantized with --quantize;
// plus config, tokenizer and generation config), export GGUF if asked, and only then move the
// outputs into place.
#include "llmtune/pipelines/merge.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/io/read_file.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/util/device.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::pipelines {
namespace {

namespace fs = std::filesystem;

void refuse_existing(const fs::path& path, bool force, const char* what) {
  if (!path.empty() && fs::exists(path) && !force)
    throw ConfigError(path.string() + ": the " + std::string(what) + " already exists (pass --force to replace it)");
}

}  // namespace

MergeReport run_merge(const MergeParams& params) {
  const auto t0 = SteadyClock::now();
  MergeReport report;
  if (params.adapter.empty()) throw ConfigError("adapter: required (a PEFT adapter directory or a finetune run directory)");
  const bool quantize = !params.quantize.type.empty();
  if (quantize) check_bnb_options(params.quantize);

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
  if (hf_out.empty() && ((params.gguf.empty() && params.lora_gguf.empty()) || quantize)) {
    hf_out = adapter.dir.filename() == "adapter" ? adapter.dir.parent_path() / "merged"
                                                 : fs::path(adapter.dir.string() + "-merged");
  }
  for (const auto& [path, what] : {std::pair{hf_out, "output directory"}, {params.gguf, "GGUF file"},
                                   {params.lora_gguf, "LoRA GGUF file"}}) {
    if (path.empty()) continue;
    refuse_existing(path, params.force, what);
    if (io::same_or_inside(path, report.model_dir) || io::same_or_inside(path, adapter.dir) ||
        io::same_or_inside(report.model_dir, path) || io::same_or_inside(adapter.dir, path))
      throw ConfigError(path.string() + ": the " + std::string(what) + " would overwrite the base model or the adapter; choose another path");
  }
  if (!hf_out.empty() && !params.gguf.empty() && io::same_or_inside(params.gguf, hf_out))
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
  report.base_quantization = weights.base_quantization();
  report.dequantized_modules = weights.quantized_base_modules();
  if (!report.base_quantization.empty())
    spdlog::info("merge: the base is quantized ({}): its {} quantized linears are dequantized (in float32), the adapter "
                 "is added, and the result is written {}", report.base_quantization, report.dequantized_modules,
                 quantize ? "re-quantized to " + params.quantize.type : "in " + report.dtype);
  if (quantize && !report.base_quantization.empty())
    spdlog::warn("merge: the {} output is quantized from the merged weights: it is NOT bit-equal to the {} base the "
                 "adapter was trained on (the base's quantization error is kept, and a new one added)",
                 params.quantize.type, report.base_quantization);

  std::unique_ptr<io::AtomicDir> staged;
  if (!hf_out.empty()) {
    const auto t_merge = SteadyClock::now();
    staged = std::make_unique<io::AtomicDir>(hf_out);
    std::vector<fs::path> files;
    if (quantize) {
      BnbExportOptions options = params.quantize;
      options.shard_size_bytes = params.shard_size_bytes;
      report.quantize_report = export_bnb(weights, staged->staging(), options);
      report.quantize = options.type;
      files = report.quantize_report.files;
    } else {
      std::vector<io::TensorSpec> specs;
      for (const auto& name : weights.names()) specs.push_back(weights.spec(name));
      files = io::save_sharded_lazy(staged->staging(), specs, [&](size_t i) { return weights.get(weights.names()[i]); },
                                    params.shard_size_bytes);
      write_output_config(report.model_dir, staged->staging(), out_dtype, std::nullopt);
    }
    copy_tokenizer_and_generation_files(report.model_dir, adapter.dir, staged->staging(), weights.config());
    for (const auto& f : files) report.files.push_back(hf_out / f.filename());
    report.merge_seconds = seconds_since(t_merge);
  }

  if (!params.gguf.empty()) {
    if (staged && !quantize) {
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
