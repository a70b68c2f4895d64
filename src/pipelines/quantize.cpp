// `llmtune quantize`, written out: check the output, stream the (merged) weights into a GGUF file or
// a bitsandbytes directory, then, when asked, evaluate source and result on the same data and report
// the perplexity cost.
#include "llmtune/pipelines/quantize.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/peft/method.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"
#include "saved_template.h"

namespace llmtune::pipelines {

namespace fs = std::filesystem;

namespace {

void check_output(const QuantizeParams& params, bool bnb) {
  std::error_code ec;
  const std::string out = params.output.string();
  if (params.output.empty())
    throw ConfigError(bnb ? "output: required (the directory to write)" : "output: required (the .gguf file to write)");
  if (bnb) {
    if (params.output.extension() == ".gguf")
      throw ConfigError("output: '" + out + "' ends in .gguf, but --type " + params.bnb.type +
                        " writes a Hugging Face directory; name a directory (or choose a GGUF type)");
    if (fs::exists(params.output, ec) && !fs::is_directory(params.output, ec))
      throw ConfigError("output: '" + out + "' is a file; --type " + params.bnb.type + " writes a directory");
    if (fs::exists(params.output, ec) && !params.force)
      throw ConfigError(out + ": the output directory already exists (pass --force to replace it)");
  } else {
    if (params.output.extension() != ".gguf")
      throw ConfigError("output: '" + out + "' does not end in .gguf (GGUF types write a file; nf4, fp4 and int8 write a directory)");
    if (fs::is_directory(params.output, ec))
      throw ConfigError("output: '" + out + "' is a directory; give the path of the .gguf file to write");
    if (fs::exists(params.output, ec) && !params.force)
      throw ConfigError(out + ": the output file already exists (pass --force to replace it)");
  }
  for (fs::path up = params.output.parent_path(); !up.empty() && up != up.root_path(); up = up.parent_path())
    if (fs::exists(up, ec) && !fs::is_directory(up, ec))
      throw ConfigError("output: '" + out + "': " + up.string() + " is a file, not a directory");
}

}  // namespace

QuantizeReport run_quantize(const QuantizeParams& params) {
  if (!params.gptq.method.empty()) return run_gptq_quantize(params);
  const auto t0 = SteadyClock::now();
  std::error_code ec;
  const bool bnb = !params.bnb.type.empty();
  if (bnb) check_bnb_options(params.bnb);
  check_output(params, bnb);
  const fs::path model_dir = io::resolve_model_dir(params.model);
  const std::string adapter = params.adapter.empty() ? "" : peft::resolve_adapter_dir(params.adapter).string();
  for (const fs::path& input : {model_dir, fs::path(adapter)})
    if (!input.empty() && io::same_or_inside(input, params.output))
      throw ConfigError("output: '" + params.output.string() + "' would overwrite the input " + input.string() +
                        "; choose another path");
  if (params.eval_data.empty() && (params.device != "auto" || params.dtype != "auto"))
    throw UsageError("--device and --dtype choose where and how --eval-data is evaluated; without --eval-data they "
                     "have no effect (the output is written from the stored weights on the CPU)");
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

  // The output: a GGUF file, or a bitsandbytes directory staged and evaluated before it appears.
  std::unique_ptr<io::AtomicDir> staged;
  {
    MergedWeights weights(model_dir, adapter, at::ScalarType::Undefined);
    for (const auto& name : weights.names()) report.source_bytes += weights.n_bytes(name);
    if (bnb) {
      staged = std::make_unique<io::AtomicDir>(params.output);
      report.bnb = export_bnb(weights, staged->staging(), params.bnb);
      copy_tokenizer_and_generation_files(model_dir, adapter, staged->staging(), weights.config());
      report.type = params.bnb.type;
      report.bytes = report.bnb.bytes;
    } else {
      GgufExportOptions options = params.gguf;
      if (options.name.empty()) options.name = model_dir.filename().string() + (adapter.empty() ? "" : "-merged");
      report.gguf = export_gguf(model_dir, weights.names(), [&](const std::string& n) { return weights.get(n); },
                                params.output, options);
      report.type = report.gguf.file_type;
      report.bytes = report.gguf.bytes;
    }
    if (weights.has_adapter() && weights.unchanged_modules() == weights.adapter_modules())
      spdlog::warn("quantize: THE ADAPTER CHANGES NOTHING: every adapted weight came out equal to the base");
  }

  if (!params.eval_data.empty()) {
    e.model = bnb ? staged->staging().string() : params.output.string();
    e.adapter = "";
    try {
      report.result_eval = run_eval(e);
    } catch (...) {
      // The command failed: leave no output behind, so that the rerun is not refused as existing.
      if (!bnb) {
        fs::remove(params.output, ec);
        if (!report.gguf.modelfile.empty()) fs::remove(report.gguf.modelfile, ec);
      }
      spdlog::info("quantize: {} not written: evaluating it failed", params.output.string());
      throw;
    }
    spdlog::info("quantize: perplexity {:.4f} (source) → {:.4f} ({}), {:+.2f}%", report.source_eval->perplexity,
                 report.result_eval->perplexity, report.type,
                 100.0 * (report.result_eval->perplexity / report.source_eval->perplexity - 1.0));
  }
  if (staged) staged->commit();
  report.output = params.output;
  report.seconds = seconds_since(t0);
  report.peak_rss_bytes = static_cast<uint64_t>(ops::peak_rss_bytes());
  return report;
}

}  // namespace llmtune::pipelines
