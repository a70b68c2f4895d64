// Loading shared by the pipelines.
#include "llmtune/pipelines/load.h"

#include <ATen/ops/isfinite.h>
#include <spdlog/spdlog.h>

#include "llmtune/io/hf_dir.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/quant/bnb_checkpoint.h"
#include "llmtune/quant/bnb_linear.h"
#include "llmtune/quant/gptq_linear.h"
#include "llmtune/quant/int8_linear.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

int64_t check_finite(const std::vector<std::pair<std::string, const at::Tensor*>>& tensors, const std::string& source,
                     bool refuse) {
  constexpr int64_t kSlice = int64_t{1} << 24;  // elements per check: bounded scratch memory
  int64_t affected = 0;
  std::string examples;
  for (const auto& [name, t] : tensors) {
    if (!t->defined() || !at::isFloatingType(t->scalar_type())) continue;
    const at::Tensor flat = t->detach().reshape({-1});
    int64_t bad = 0;
    for (int64_t off = 0; off < flat.numel(); off += kSlice)
      bad += (~at::isfinite(flat.narrow(0, off, std::min(kSlice, flat.numel() - off)))).sum().item<int64_t>();
    if (bad == 0) continue;
    if (++affected <= 3)
      examples += fmt::format("{}'{}' ({} of {})", examples.empty() ? "" : ", ", name, bad, flat.numel());
  }
  if (affected == 0) return 0;
  const std::string line = fmt::format("{}: {} tensor(s) hold NaN or infinite values: {}{}; everything computed from them is NaN",
                                       source, affected, examples, affected > 3 ? ", ..." : "");
  if (refuse) throw ModelLoadError(line);
  spdlog::warn("{}", line);
  return affected;
}

int64_t check_model_finite(model::CausalLM& model, const std::string& source, bool refuse) {
  std::vector<std::pair<std::string, const at::Tensor*>> weights;
  for (const auto& [name, slot] : model.named_weights()) weights.emplace_back(name, slot);
  // A quantized linear lists no weight above: its float state (4-bit absmax, int8 SCB, GPTQ
  // scales, bias) is checked instead, since a NaN absmax makes every output of its layer NaN.
  std::vector<std::pair<std::string, at::Tensor>> states;
  for (const auto& [path, slot] : model.named_linears())
    if ((*slot)->parameter_slots().empty())
      for (const at::Tensor& t : (*slot)->tensors()) states.emplace_back(path + " (quantized state)", t);
  for (const auto& [name, t] : states) weights.emplace_back(name, &t);
  return check_finite(weights, source, refuse);
}

namespace {

// The linear factory for a Hugging Face directory: its stored bitsandbytes format, a quantization
// asked for on the command line, or dense. `what` gets a description for the log.
model::LinearFactory choose_linear_factory(const std::filesystem::path& dir, c10::Device device,
                                           const QuantizeOnLoad& options, std::string* what) {
  const std::string& quantize = options.type;
  if (const auto gptq = quant::read_gptq_config(dir)) {
    if (quantize != "none")
      throw UsageError(dir.string() + " is already a GPTQ checkpoint (config.json quantization_config); drop --quantize " + quantize);
    *what = fmt::format("GPTQ {}-bit checkpoint (group size {}{})", gptq->bits, gptq->group_size, gptq->desc_act ? ", act-order" : "");
    return quant::gptq_linear_factory(*gptq, io::WeightFiles::open(dir), dir, device);
  }
  const std::optional<quant::BnbConfig> bnb = quant::read_bnb_config(dir);
  if (bnb) {
    if (quantize != "none")
      throw UsageError(dir.string() + " is already a bitsandbytes " + (bnb->load_in_4bit ? "4-bit" : "8-bit") +
                       " checkpoint (config.json quantization_config); drop --quantize " + quantize);
    *what = bnb->load_in_4bit ? fmt::format("bitsandbytes 4-bit {} checkpoint{}", quant::four_bit_name(bnb->type),
                                            bnb->double_quant ? " (double quant)" : "")
                              : fmt::format("bitsandbytes 8-bit checkpoint (LLM.int8, threshold {})", bnb->int8_threshold);
    return quant::bnb_checkpoint_linear_factory(*bnb, io::WeightFiles::open(dir), dir, device);
  }
  if (quantize == "none") return model::make_dense_linear;
  if (quantize == "int8") {
    *what = "quantized to int8 (LLM.int8) while loading";
    return quant::int8_linear_factory();
  }
  if (quantize != "nf4" && quantize != "fp4") throw UsageError("--quantize must be nf4, fp4, int8 or none, got '" + quantize + "'");
  *what = fmt::format("quantized to {} (blocksize {}{}) while loading", quantize, options.blocksize,
                      options.double_quant ? ", double quant" : "");
  quant::FourBitOptions four_bit;
  four_bit.type = quant::four_bit_from_name(quantize);
  four_bit.blocksize = options.blocksize;
  four_bit.double_quant = options.double_quant;
  return quant::four_bit_linear_factory(four_bit);
}

// "N of M linears 4-bit/int8, X MiB packed": said once after a quantized load.
void log_quantized(const std::string& command, model::CausalLM& model, const std::string& what) {
  int64_t quantized = 0, total = 0, bytes = 0;
  for (const auto& [path, slot] : model.named_linears()) {
    ++total;
    const model::Linear* l = slot->get();
    if (!dynamic_cast<const quant::FourBitLinear*>(l) && !dynamic_cast<const quant::Int8Linear*>(l) &&
        !dynamic_cast<const quant::GptqLinear*>(l))
      continue;
    ++quantized;
    for (const at::Tensor& t : l->tensors()) bytes += t.defined() ? t.nbytes() : 0;
  }
  spdlog::info("{}: {}: {} of {} linears quantized ({:.1f} MiB), the rest dense", command, what, quantized, total,
               bytes / 1048576.0);
}

}  // namespace

LoadedModel load_model(const std::string& command, const std::string& model, const std::string& adapter,
                       const std::string& device, const std::string& dtype, bool refuse_non_finite,
                       const QuantizeOnLoad& quantize) {
  LoadedModel m;
  // A .gguf file (ours or llama.cpp's) instead of a model directory: `dir` is then the file.
  const bool gguf = model.ends_with(".gguf");
  if (gguf && quantize.type != "none")
    throw UsageError(model + ": --quantize applies to Hugging Face model directories; a GGUF file keeps its own quantization");
  if (gguf && !std::filesystem::is_regular_file(model))
    throw ModelLoadError(model + ": no such GGUF file");
  m.dir = gguf ? std::filesystem::path(model) : io::resolve_model_dir(model);
  m.device = choose_device(device);
  m.dtype = choose_dtype(dtype, m.device.device);
  spdlog::info("{}: {} on {} ({}), {}", command, m.dir.string(), m.device.device.str(), m.device.reason,
               dtype_name(m.dtype.dtype));
  if (gguf) {
    GgufModel g = load_gguf_model(m.dir, m.device.device, m.dtype.dtype);
    m.tokenizer = std::move(g.tokenizer);
    m.model = std::move(g.model);
  } else {
    m.tokenizer = tokenizer::load_tokenizer(m.dir);
    std::string what;
    const model::LinearFactory linear = choose_linear_factory(m.dir, m.device.device, quantize, &what);
    m.model = std::make_unique<model::CausalLM>(model::CausalLM::load(m.dir, m.device.device, m.dtype.dtype, linear));
    if (!what.empty()) log_quantized(command, *m.model, what);
  }
  {
    check_model_finite(*m.model, m.dir.string(), refuse_non_finite);
  }
  if (!adapter.empty()) {
    const std::filesystem::path dir = peft::resolve_adapter_dir(adapter);
    peft::apply_adapter(*m.model, dir);
    const peft::SavedAdapter saved = peft::open_adapter(dir);
    std::vector<std::pair<std::string, const at::Tensor*>> tensors;
    for (const auto& [name, t] : saved.tensors) tensors.emplace_back(name, &t);
    check_finite(tensors, saved.weights_path.string(), refuse_non_finite);
  }
  return m;
}

}  // namespace llmtune::pipelines
