// Loading shared by the pipelines.
#include "llmtune/pipelines/load.h"

#include <ATen/ops/isfinite.h>
#include <spdlog/spdlog.h>

#include "llmtune/io/hf_dir.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/gguf.h"
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

LoadedModel load_model(const std::string& command, const std::string& model, const std::string& adapter,
                       const std::string& device, const std::string& dtype, bool refuse_non_finite) {
  LoadedModel m;
  // A .gguf file (ours or llama.cpp's) instead of a model directory: `dir` is then the file.
  const bool gguf = model.ends_with(".gguf");
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
    m.model = std::make_unique<model::CausalLM>(model::CausalLM::load(m.dir, m.device.device, m.dtype.dtype));
  }
  {
    std::vector<std::pair<std::string, const at::Tensor*>> weights;
    for (const auto& [name, slot] : m.model->named_weights()) weights.emplace_back(name, slot);
    check_finite(weights, m.dir.string(), refuse_non_finite);
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
