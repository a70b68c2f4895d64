// `llmtune quantize`, written out: check the output, stream the (merged) weights into a GGUF file,
// then, when asked, evaluate source and result on the same data and report the perplexity cost.
#include "llmtune/pipelines/quantize.h"

#include <spdlog/spdlog.h>

#include "llmtune/io/hf_dir.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/peft/method.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"
#include "saved_template.h"

namespace llmtune::pipelines {

namespace fs = std::filesystem;

QuantizeReport run_quantize(const QuantizeParams& params) {
  const auto t0 = SteadyClock::now();
  std::error_code ec;
  if (params.output.empty()) throw ConfigError("output: required (the .gguf file to write)");
  if (params.output.extension() != ".gguf")
    throw ConfigError("output: '" + params.output.string() + "' does not end in .gguf (only GGUF types are supported yet)");
  if (fs::is_directory(params.output, ec))
    throw ConfigError("output: '" + params.output.string() + "' is a directory; give the path of the .gguf file to write");
  if (fs::exists(params.output, ec) && !params.force)
    throw ConfigError(params.output.string() + ": the output file already exists (pass --force to replace it)");
  for (fs::path up = params.output.parent_path(); !up.empty() && up != up.root_path(); up = up.parent_path())
    if (fs::exists(up, ec) && !fs::is_directory(up, ec))
      throw ConfigError("output: '" + params.output.string() + "': " + up.string() + " is a file, not a directory");
  const fs::path model_dir = io::resolve_model_dir(params.model);
  const std::string adapter = params.adapter.empty() ? "" : peft::resolve_adapter_dir(params.adapter).string();
  if (params.eval_data.empty() && (params.device != "auto" || params.dtype != "auto"))
    throw UsageError("--device and --dtype choose where and how --eval-data is evaluated; without --eval-data they "
                     "have no effect (the GGUF file is written from the stored weights on the CPU)");
  if (!params.eval_data.empty() && !fs::exists(params.eval_data, ec))
    throw ConfigError("eval_data: '" + params.eval_data + "' does not exist");
  if (!params.eval_data.empty() && fs::is_directory(params.eval_data, ec))
    throw ConfigError("eval_data: '" + params.eval_data + "' is a directory, not a data file");

  // The source is evaluated first: bad evaluation data fails before any output is written.
  QuantizeReport report;
  EvalParams e;
  if (!params.eval_data.empty()) {
    e.data = params.eval_data;
    e.max_seq_len = params.eval_max_seq_len;
    e.batch_size = params.eval_batch_size;
    e.device = params.device;
    e.dtype = params.dtype;
    e.model = model_dir.string();
    e.adapter = adapter;
    // Both evaluations render chat rows alike: with the template saved with the adapter, if it has one.
    if (auto saved = saved_chat_template(adapter)) {
      e.chat_template = saved->string();
      spdlog::info("quantize: evaluating with the chat template saved with the adapter ({})", e.chat_template);
    }
    report.source_eval = run_eval(e);
  }

  {
    MergedWeights weights(model_dir, adapter, at::ScalarType::Undefined);
    for (const auto& name : weights.names()) report.source_bytes += weights.n_bytes(name);
    GgufExportOptions options = params.gguf;
    if (options.name.empty()) options.name = model_dir.filename().string() + (adapter.empty() ? "" : "-merged");
    report.gguf = export_gguf(model_dir, weights.names(), [&](const std::string& n) { return weights.get(n); },
                              params.output, options);
    if (weights.has_adapter() && weights.unchanged_modules() == weights.adapter_modules())
      spdlog::warn("quantize: THE ADAPTER CHANGES NOTHING: every adapted weight came out equal to the base");
  }

  if (!params.eval_data.empty()) {
    e.model = params.output.string();
    e.adapter = "";
    try {
      report.gguf_eval = run_eval(e);
    } catch (...) {
      // The command failed: leave no output behind, so that the rerun is not refused as existing.
      fs::remove(params.output, ec);
      if (!report.gguf.modelfile.empty()) fs::remove(report.gguf.modelfile, ec);
      spdlog::info("quantize: removed {}: evaluating it failed", params.output.string());
      throw;
    }
    spdlog::info("quantize: perplexity {:.4f} (source) → {:.4f} ({}), {:+.2f}%", report.source_eval->perplexity,
                 report.gguf_eval->perplexity, report.gguf.file_type,
                 100.0 * (report.gguf_eval->perplexity / report.source_eval->perplexity - 1.0));
  }
  report.seconds = seconds_since(t0);
  report.peak_rss_bytes = static_cast<uint64_t>(ops::peak_rss_bytes());
  return report;
}

}  // namespace llmtune::pipelines
