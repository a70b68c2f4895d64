// What eval, infer (and later commands) load first: the model directory resolved, the device and
// dtype chosen, the tokenizer, the weights, and an optional PEFT adapter applied.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "llmtune/model/causal_lm.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/ops/runtime.h"  // choose_dtype
#include "llmtune/util/device.h"

namespace llmtune::pipelines {

struct LoadedModel {
  std::filesystem::path dir;
  DeviceChoice device;
  DtypeChoice dtype;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<model::CausalLM> model;
};

// `command` names the job in the log line. `model`: a model directory, a hub repo id, or a .gguf
// file (load_gguf_model; `dir` is then that file). adapter: "" for none.
LoadedModel load_model(const std::string& command, const std::string& model, const std::string& adapter,
                       const std::string& device, const std::string& dtype);

}  // namespace llmtune::pipelines
