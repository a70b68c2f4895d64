// Loading shared by the pipelines.
#include "llmtune/pipelines/load.h"

#include <spdlog/spdlog.h>

#include "llmtune/io/hf_dir.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

LoadedModel load_model(const std::string& command, const std::string& model, const std::string& adapter,
                       const std::string& device, const std::string& dtype) {
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
  if (!adapter.empty()) peft::apply_adapter(*m.model, io::resolve_model_dir(adapter));
  return m;
}

}  // namespace llmtune::pipelines
