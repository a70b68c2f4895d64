// Loading shared by the pipelines.
#include "llmtune/pipelines/load.h"

#include <spdlog/spdlog.h>

#include "llmtune/io/hf_dir.h"
#include "llmtune/peft/lora.h"

namespace llmtune::pipelines {

LoadedModel load_model(const std::string& command, const std::string& model, const std::string& adapter,
                       const std::string& device, const std::string& dtype) {
  LoadedModel m;
  m.dir = io::resolve_model_dir(model);
  m.device = choose_device(device);
  m.dtype = choose_dtype(dtype, m.device.device);
  spdlog::info("{}: {} on {} ({}), {}", command, m.dir.string(), m.device.device.str(), m.device.reason,
               dtype_name(m.dtype.dtype));
  m.tokenizer = tokenizer::load_tokenizer(m.dir);
  m.model = std::make_unique<model::CausalLM>(model::CausalLM::load(m.dir, m.device.device, m.dtype.dtype));
  if (!adapter.empty()) peft::apply_adapter(*m.model, io::resolve_model_dir(adapter));
  return m;
}

}  // namespace llmtune::pipelines
