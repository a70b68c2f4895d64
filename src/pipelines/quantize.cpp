// `llmtune quantize`, written out: check the output, stream the (merged) weights into a GGUF file,
// then, when asked, evaluate source and result on the same data and report the perplexity cost.
#include "llmtune/pipelines/quantize.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "llmtune/io/hf_dir.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/train/progress.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

namespace fs = std::filesystem;

QuantizeReport run_quantize(const QuantizeParams& params) {
  const auto t0 = std::chrono::steady_clock::now();
  if (params.output.empty()) throw ConfigError("output: required (the .gguf file to write)");
  if (params.output.extension() != ".gguf")
    throw ConfigError("output: '" + params.output.string() + "' does not end in .gguf (only GGUF types are supported yet)");
  if (fs::exists(params.output) && !params.force)
    throw ConfigError(params.output.string() + ": the output file already exists (pass --force to replace it)");
  const fs::path model_dir = io::resolve_model_dir(params.model);
  if (!params.eval_data.empty() && !fs::exists(params.eval_data))
    throw ConfigError("eval_data: '" + params.eval_data + "' does not exist");

  MergedWeights weights(model_dir, params.adapter, at::ScalarType::Undefined);
  QuantizeReport report;
  for (const auto& name : weights.names()) report.source_bytes += weights.n_bytes(name);
  GgufExportOptions options = params.gguf;
  if (options.name.empty()) options.name = model_dir.filename().string() + (params.adapter.empty() ? "" : "-merged");
  report.gguf = export_gguf(model_dir, weights.names(), [&](const std::string& n) { return weights.get(n); }, params.output,
                            options);
  if (weights.has_adapter() && weights.unchanged_modules() == weights.adapter_modules())
    spdlog::warn("quantize: THE ADAPTER CHANGES NOTHING: every adapted weight came out equal to the base");

  if (!params.eval_data.empty()) {
    EvalParams e;
    e.data = params.eval_data;
    e.max_seq_len = params.eval_max_seq_len;
    e.batch_size = params.eval_batch_size;
    e.device = params.device;
    e.dtype = params.dtype;
    e.model = model_dir.string();
    e.adapter = params.adapter;
    report.source_eval = run_eval(e);
    e.model = params.output.string();
    e.adapter = "";
    report.gguf_eval = run_eval(e);
    spdlog::info("quantize: perplexity {:.4f} (source) → {:.4f} ({}), {:+.2f}%", report.source_eval->perplexity,
                 report.gguf_eval->perplexity, report.gguf.file_type,
                 100.0 * (report.gguf_eval->perplexity / report.source_eval->perplexity - 1.0));
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  report.peak_rss_bytes = static_cast<uint64_t>(train::peak_memory_bytes(false, 0));
  return report;
}

}  // namespace llmtune::pipelines
