// `llmtune quantize --method gptq|rtn`, written out: check the inputs, load the model in fp32, read
// the calibration text, quantize layer by layer (each linear replaced in its slot by its dequantized
// weight, so that the next layer sees the quantized outputs), write the GPTQ directory, and evaluate
// source and result when asked (the result in memory, from the same dequantized weights).
#include <ATen/core/grad_mode.h>
#include <ATen/ops/tensor.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/io/read_file.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/model/calibration.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/pipelines/eval.h"
#include "llmtune/pipelines/load.h"
#include "llmtune/pipelines/merge.h"
#include "llmtune/pipelines/quantize.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/util/error.h"
#include "llmtune/util/timing.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
namespace {

// A quantized linear's weight as a reader of the written file gets it: the scales rounded to the
// dtype they are stored in.
at::Tensor dequantized_as_written(const quant::GroupQuantized& q, at::ScalarType scale_dtype) {
  quant::GroupQuantized stored = q;
  stored.scales = q.scales.to(scale_dtype).to(at::kFloat);
  return stored.dequantized();
}

}  // namespace

nlohmann::json gptq_quantization_config(const GptqExportOptions& o) {
  const auto& g = o.gptq;
  return {{"quant_method", "gptq"}, {"bits", g.quant.bits}, {"group_size", g.quant.group_size}, {"desc_act", g.act_order},
          {"sym", g.quant.sym}, {"lm_head", false}, {"checkpoint_format", "gptq"}, {"damp_percent", g.damp},
          {"static_groups", g.act_order}, {"true_sequential", false},
          {"meta", {{"quantizer", {"llmtune:" + o.method}}, {"damp_percent", g.damp}, {"static_groups", g.act_order},
                    {"true_sequential", false}}}};
}

std::vector<QuantizedLinear> quantize_model_gptq(model::CausalLM& model, const GptqExportOptions& o,
                                                 const at::Tensor& calibration_ids, GptqExportReport& report) {
  at::NoGradGuard no_grad;
  const std::string lm_head = model.family().lm_head;
  std::vector<QuantizedLinear> done;
  auto quantize_linear = [&](const std::string& path, model::LinearPtr& slot, const model::RecordingLinear* stats) {
    const at::Tensor w = slot->dense_weight().to(at::kFloat);
    GptqLayerReport layer{path, w.size(0), w.size(1), 0, 0};
    const at::Tensor hessian = stats ? stats->hessian() : at::Tensor();  // 2/n·XᵀX: an (in × in) product, made once
    QuantizedLinear result{path, o.method == "gptq" ? quant::gptq_quantize(w, hessian, o.gptq, path) : quant::rtn_quantize(w, o.gptq.quant),
                           slot->bias()};
    const at::Tensor deq = result.q.dequantized();
    if (stats) {
      // Σ_tokens ‖ΔW x‖² per sequence = tr(ΔW H ΔWᵀ) / 2, H = 2/n Σ xxᵀ.
      const at::Tensor d = w - deq;
      layer.output_error = (d.matmul(hessian) * d).sum().item<double>() / 2.0;
      layer.damp = result.q.damp_used;
    }
    report.layers.push_back(layer);
    slot = std::make_shared<model::DenseLinear>(deq.to(w.scalar_type()), slot->bias());
    done.push_back(std::move(result));
  };
  if (o.method == "rtn") {
    for (const auto& [path, slot] : model.named_linears())
      if (path != lm_head) quantize_linear(path, *slot, nullptr);
    return done;
  }
  TORCH_CHECK(calibration_ids.defined() && calibration_ids.dim() == 2, "quantize_model_gptq: gptq needs calibration ids (N, T)");
  model::LayerwiseOptions lo;
  lo.wanted = {.sq_norms = false, .hessian = true};
  lo.tokens_per_forward = o.tokens_per_forward;
  const auto n_layers = model.layers().size();
  model::run_layerwise(model, model.embed(calibration_ids.to(model.device())), lo,
                       [&](int64_t layer, std::vector<model::CalibratedLinear>& linears) {
                         for (auto& l : linears) quantize_linear(l.path, *l.slot, l.recorder.get());
                         spdlog::info("quantize: gptq layer {}/{} ({} linears)", layer + 1, n_layers, linears.size());
                       });
  return done;
}

nlohmann::json compressed_tensors_config(const GptqExportOptions& o) {
  const auto& q = o.gptq.quant;
  nlohmann::json weights = {{"num_bits", q.bits}, {"type", "int"}, {"symmetric", q.sym}, {"strategy", "group"},
                            {"group_size", q.group_size}, {"dynamic", false}};
  // Act-order with static groups changes no layout (groups stay on the original columns): a label.
  if (o.gptq.act_order) weights["actorder"] = "static";
  return {{"quant_method", "compressed-tensors"}, {"format", "pack-quantized"}, {"quantization_status", "compressed"},
          {"config_groups", {{"group_0", {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", nullptr},
                                          {"output_activations", nullptr}, {"format", "pack-quantized"}}}}},
          {"ignore", {"lm_head"}}, {"kv_cache_scheme", nullptr}, {"sparsity_config", nlohmann::json::object()}};
}

QuantizeReport run_gptq_quantize(const QuantizeParams& params) {
  const auto t0 = SteadyClock::now();
  const GptqExportOptions& o = params.gptq;
  const auto& q = o.gptq.quant;
  std::error_code ec;
  if (o.method != "gptq" && o.method != "rtn") throw ConfigError("method: '" + o.method + "' is not gptq or rtn");
  if (!quant::supported_bits(q.bits))
    throw ConfigError(fmt::format("bits: {} is not one of 2, 3, 4, 8", q.bits));
  if (o.format != "gptq" && o.format != "compressed-tensors")
    throw ConfigError("format: '" + o.format + "' is not gptq or compressed-tensors");
  const bool ct = o.format == "compressed-tensors";
  if (!params.adapter.empty())
    throw UsageError("--adapter with --method " + o.method + ": merge the adapter first (llmtune merge), then quantize the merged model");
  if (o.method == "gptq" && o.calibration.path.empty())
    throw ConfigError("calibration: required for --method gptq (text to calibrate on: a .txt or .jsonl file)");
  if (o.method == "rtn" && !o.calibration.path.empty())
    throw UsageError("--calibration has no effect for --method rtn (round-to-nearest uses the weights alone); remove it or use --method gptq");
  if (params.eval_data.empty() && params.dtype != "auto")
    throw UsageError("--dtype chooses how --eval-data is evaluated (the quantizer computes in fp32); without --eval-data it has no effect");
  if (params.output.empty()) throw ConfigError("output: required (the directory to write)");
  if (fs::exists(params.output, ec) && !fs::is_directory(params.output, ec))
    throw ConfigError("output: '" + params.output.string() + "' is a file; --method " + o.method + " writes a directory");
  if (fs::exists(params.output, ec) && !params.force)
    throw ConfigError(params.output.string() + ": the output directory already exists (pass --force to replace it)");
  for (const auto& [key, file] : {std::pair{"calibration", o.calibration.path.string()}, {"eval_data", params.eval_data}})
    if (!file.empty() && (!fs::exists(file, ec) || fs::is_directory(file, ec)))
      throw ConfigError(std::string(key) + ": '" + file + "' is not a file");
  const fs::path model_dir = io::resolve_model_dir(params.model);
  if (io::same_or_inside(model_dir, params.output))
    throw ConfigError("output: '" + params.output.string() + "' would overwrite the input " + model_dir.string() + "; choose another path");

  QuantizeReport report;
  report.type = fmt::format("{}-{}bit-g{}{}{}", o.method, q.bits, q.group_size, q.sym ? "-sym" : "-asym",
                            o.gptq.act_order ? "-act-order" : "");
  // The source is evaluated first: bad evaluation data fails before anything is quantized.
  EvalParams e;
  if (!params.eval_data.empty()) {
    e.model = model_dir.string();
    e.data = params.eval_data;
    e.max_seq_len = params.eval_max_seq_len;
    e.batch_size = params.eval_batch_size;
    e.device = params.device;
    e.dtype = params.dtype;
    report.source_eval = run_eval(e);
  }

  // The model in fp32 (the quantizer's arithmetic), on the chosen device.
  LoadedModel loaded = load_model("quantize", model_dir.string(), "", params.device, "fp32");
  model::CausalLM& model = *loaded.model;
  const std::string lm_head = model.family().lm_head;
  // Every linear's input dimension must hold whole groups and whole packed words.
  for (const auto& [path, slot] : model.named_linears()) {
    if (path == lm_head) continue;
    const int64_t in = (*slot)->in_features(), out = (*slot)->out_features();
    if (q.group_size != -1 && in % q.group_size != 0)
      throw ConfigError(fmt::format("group_size: {} does not divide {}'s {} input features; use a divisor or -1", q.group_size, path, in));
    if (!quant::packs_whole(in, q.bits) || !quant::packs_whole(out, q.bits))
      throw ConfigError(fmt::format("bits: {}'s shape {}×{} does not pack into 32-bit words of {}-bit codes", path, out, in, q.bits));
  }

  auto checkpoint = io::WeightFiles::open(model_dir);
  auto scale_dtype_of = [&](const std::string& module) {
    return ct ? io::dtype_from_safetensors(checkpoint.info(module + ".weight").dtype) : at::kHalf;
  };
  if (!params.eval_data.empty() && o.method == "gptq") {
    // The baseline next to GPTQ: round-to-nearest with the same bits and groups, as it would be
    // written, evaluated with the source's linears set aside and then put back.
    std::vector<std::pair<model::LinearPtr*, model::LinearPtr>> source;
    for (const auto& [path, slot] : model.named_linears()) {
      if (path == lm_head) continue;
      source.emplace_back(slot, *slot);
      const at::Tensor w = (*slot)->dense_weight().to(at::kFloat);
      *slot = std::make_shared<model::DenseLinear>(dequantized_as_written(quant::rtn_quantize(w, q), scale_dtype_of(path)),
                                                   (*slot)->bias());
    }
    report.rtn_eval = eval_model(e, model, *loaded.tokenizer);
    for (auto& [slot, original] : source) *slot = std::move(original);
  }

  const auto t_quant = SteadyClock::now();
  at::Tensor calibration_ids;
  if (o.method == "gptq") {
    const CalibrationSet calibration = read_calibration(o.calibration, *loaded.tokenizer);
    if (calibration.ids.max().item<int64_t>() >= model.config().vocab_size)
      throw DataError(o.calibration.path.string() + ": token ids past the model's vocabulary: is the tokenizer the model's?");
    report.gptq.calibration_sequences = calibration.ids.size(0);
    report.gptq.calibration_seq_len = calibration.ids.size(1);
    spdlog::info("quantize: {} calibration sequences of {} tokens from {}", calibration.ids.size(0), calibration.ids.size(1),
                 o.calibration.path.string());
    calibration_ids = calibration.ids;
  }
  std::map<std::string, QuantizedLinear> done;  // module path → codes
  for (auto& l : quantize_model_gptq(model, o, calibration_ids, report.gptq)) done.emplace(l.path, std::move(l));
  report.gptq.quantize_seconds = seconds_since(t_quant);

  // The directory: quantized linears as qweight/qzeros/scales/g_idx, every other tensor as stored.
  std::vector<std::string> names = checkpoint.names();
  std::sort(names.begin(), names.end(), natural_less);
  std::vector<io::TensorSpec> specs;
  std::vector<std::function<at::Tensor()>> makers;
  const int64_t bits = q.bits;
  for (const auto& name : names) {
    const auto& info = checkpoint.info(name);
    const std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : "";
    auto it = module.empty() ? done.end() : done.find(module);
    report.source_bytes += io::TensorSpec{name, io::dtype_from_safetensors(info.dtype), info.shape}.n_bytes();
    if (it == done.end()) {
      if (!ct && name.ends_with(".bias") && done.count(name.substr(0, name.size() - 5))) {
        specs.push_back({name, at::kHalf, info.shape});
        makers.push_back([&checkpoint, name] { return checkpoint.tensor(name).to(at::kHalf); });
        continue;
      }
      report.gptq.kept.push_back(name);
      specs.push_back({name, io::dtype_from_safetensors(info.dtype), info.shape});
      makers.push_back([&checkpoint, name] { return checkpoint.tensor(name).clone(); });
      continue;
    }
    const quant::GroupQuantized& g = it->second.q;
    const int64_t out = g.codes.size(0), in = g.codes.size(1), groups = g.scales.size(1);
    if (ct) {
      // pack-quantized: codes packed along the input dimension per row, each stored as q + 2^(bits−1)
      // for the signed q = u − 2^(bits−1), i.e. u itself; the zero points likewise (asymmetric only).
      const at::ScalarType scale_dtype = io::dtype_from_safetensors(info.dtype);
      specs.push_back({module + ".weight_packed", at::kInt, {out, in * bits / 32}});
      makers.push_back([&g, bits] { return quant::pack_codes(g.codes, bits, 1).cpu(); });
      specs.push_back({module + ".weight_scale", scale_dtype, {out, groups}});
      makers.push_back([&g, scale_dtype] { return g.scales.to(scale_dtype).contiguous().cpu(); });
      specs.push_back({module + ".weight_shape", at::kLong, {2}});
      makers.push_back([out, in] { return at::tensor(std::vector<int64_t>{out, in}, at::kLong); });
      if (!q.sym) {
        specs.push_back({module + ".weight_zero_point", at::kInt, {out * bits / 32, groups}});
        makers.push_back([&g, bits] { return quant::pack_codes(g.zeros, bits, 0).cpu(); });
      }
      continue;
    }
    specs.push_back({module + ".qweight", at::kInt, {in * bits / 32, out}});
    makers.push_back([&g, bits] { return quant::pack_codes(g.codes.t(), bits, 0).cpu(); });
    specs.push_back({module + ".qzeros", at::kInt, {groups, out * bits / 32}});
    // v1 ("gptq") checkpoints store z − 1, in the code's bits.
    makers.push_back([&g, bits] { return quant::pack_codes((g.zeros.to(at::kLong) - 1).bitwise_and((1 << bits) - 1).t(), bits, 1).cpu(); });
    specs.push_back({module + ".scales", at::kHalf, {groups, out}});
    makers.push_back([&g] { return g.scales.t().to(at::kHalf).contiguous().cpu(); });
    specs.push_back({module + ".g_idx", at::kInt, {in}});
    makers.push_back([&g] { return g.g_idx.to(at::kInt).contiguous().cpu(); });
  }
  for (const auto& s : specs) report.bytes += s.n_bytes();
  io::AtomicDir staged(params.output);
  io::save_sharded_lazy(staged.staging(), specs, [&](size_t i) { return makers[i](); }, uint64_t{5} << 30);
  auto config = io::read_json_file<ModelLoadError, nlohmann::ordered_json>(model_dir / "config.json", "config.json");
  if (ct) {
    config["quantization_config"] = compressed_tensors_config(o);
  } else {
    // The dtype of the scales (and of the model transformers builds around them).
    bool set = false;
    for (const char* key : {"dtype", "torch_dtype"})
      if (config.contains(key)) config[key] = "float16", set = true;
    if (!set) config["dtype"] = "float16";
    config["quantization_config"] = gptq_quantization_config(o);
    io::write_file_atomic(staged.staging() / "quantize_config.json", gptq_quantization_config(o).dump(2) + "\n");
  }
  io::write_file_atomic(staged.staging() / "config.json", config.dump(2) + "\n");
  copy_tokenizer_and_generation_files(model_dir, "", staged.staging(), model.config());

  if (!params.eval_data.empty()) {
    // The result as written, in memory: the same dequantized weights (the scales rounded to fp16 for
    // gptq, to the weight's stored dtype for compressed-tensors).
    for (auto& [path, r] : done)
      model.linear(path) = std::make_shared<model::DenseLinear>(dequantized_as_written(r.q, scale_dtype_of(path)), r.bias);
    report.result_eval = eval_model(e, model, *loaded.tokenizer);
    spdlog::info("quantize: perplexity {:.4f} (source) → {:.4f} ({}), {:+.2f}%{}", report.source_eval->perplexity,
                 report.result_eval->perplexity, report.type,
                 100.0 * (report.result_eval->perplexity / report.source_eval->perplexity - 1.0),
                 report.rtn_eval ? fmt::format("; rtn {:.4f}", report.rtn_eval->perplexity) : "");
  }
  staged.commit();
  report.output = params.output;
  report.seconds = seconds_since(t0);
  report.peak_rss_bytes = static_cast<uint64_t>(ops::peak_rss_bytes());
  return report;
}

}  // namespace llmtune::pipelines
