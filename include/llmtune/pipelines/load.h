// What eval, infer (and later commands) load first: the model directory resolved, the device and
// dtype chosen, the tokenizer, the weights, and an optional PEFT adapter applied.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/ops/runtime.h"  // choose_dtype
#include "llmtune/pipelines/quantize_on_load.h"
#include "llmtune/util/device.h"

namespace llmtune::pipelines {

struct LoadedModel {
  std::filesystem::path dir;
  DeviceChoice device;
  DtypeChoice dtype;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<model::CausalLM> model;
};

// Tensors holding NaN or ±inf make every result computed from them NaN: warns once, naming the
// first few and the count ("<source>: 2 tensor(s) hold NaN or infinite values: 'a' (3 of 4096), ..."),
// or throws ModelLoadError with the same line when `refuse`. Returns how many tensors are affected.
int64_t check_finite(const std::vector<std::pair<std::string, const at::Tensor*>>& tensors, const std::string& source,
                     bool refuse);
// check_finite over a loaded model's weights and its quantized linears' float state (absmax, SCB,
// GPTQ scales, biases), each of those named "<module> (quantized state)".
int64_t check_model_finite(model::CausalLM& model, const std::string& source, bool refuse);

// `command` names the job in the log line. `model`: a model directory, a hub repo id, or a .gguf
// file (load_gguf_model; `dir` is then that file). adapter: "" for none.
// The base weights and the adapter are checked with check_finite (refused when refuse_non_finite).
// A directory whose config.json holds a bitsandbytes quantization_config loads its 4-bit / 8-bit
// linears as stored. `quantize` (type "nf4", "fp4" or "int8") quantizes a 16-bit directory's
// linears (all but lm_head) while they are read; UsageError on a .gguf or an already quantized one.
LoadedModel load_model(const std::string& command, const std::string& model, const std::string& adapter,
                       const std::string& device, const std::string& dtype, bool refuse_non_finite = false,
                       const QuantizeOnLoad& quantize = {});

}  // namespace llmtune::pipelines
