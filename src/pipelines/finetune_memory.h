// What finetune's base model costs and how it is held: the memory estimate checked before anything
// is allocated, the base's bytes as stored in 16 bits vs as held (4-bit linears packed), and the
// quantization a run records so that --resume cannot continue an adapter over another base.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "llmtune/data/dataset.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/model/config.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/quant/bnb_checkpoint.h"

namespace llmtune::pipelines {

// A training step's memory, estimated from the config and the data (lower bounds, in bytes).
struct MemoryEstimate {
  double parameters = 0;            // the base's
  double weights = 0, activations = 0, logits = 0, extra = 0;
  double total() const { return weights + activations + logits + extra; }
  int64_t row_tokens = 0;           // tokens per micro-batch row (max_seq_len packed, the longest example unpacked)
  int64_t longest_example = 0;
};
MemoryEstimate estimate_memory(const FinetuneParams& p, const model::ModelConfig& c, const data::Dataset& dataset,
                               at::ScalarType dtype, const std::filesystem::path& model_dir, bool quantized_base,
                               double extra_bytes = 0);

// Estimates a training step's memory from the config and the data and refuses (ConfigError with the
// estimate and what to lower) when the device cannot hold it; warns when rows run past the context.
// quantized_base: the frozen linears are held in 4 bits. extra_bytes: what else the step holds on the
// device (a distillation teacher's weights).
void check_memory(const FinetuneParams& p, const model::ModelConfig& c, const data::Dataset& dataset, const c10::Device& device,
                  at::ScalarType dtype, const std::filesystem::path& model_dir, bool quantized_base, double extra_bytes = 0);

// What to quantize the base to while it loads ("none", "nf4", "fp4"), from model.quantize (auto:
// nf4 with method qlora) and the model directory: a bitsandbytes checkpoint (`bnb`) loads as stored,
// so model.quantize must be auto there, and method full cannot train it (ConfigErrors naming the key).
std::string quantize_on_load(const FinetuneParams& p, const std::optional<quant::BnbConfig>& bnb,
                             const std::filesystem::path& model_dir);

// The base's quantization as the run records it (checkpoint state, summary): {"type": "none"}, or
// {"type": "nf4"|"fp4", "double_quant": bool, "blocksize": n}, or {"type": "int8"}.
// planned_quantization: what quantizing while loading will give (known before loading);
// loaded_quantization: read off the loaded model's linears (a bitsandbytes checkpoint's included).
nlohmann::json planned_quantization(const FinetuneParams& p, const std::string& on_load);
nlohmann::json loaded_quantization(model::CausalLM& model);
// "nf4 (double-quantized absmax, blocks of 64)", "none (a 16-bit base)".
std::string describe_quantization(const nlohmann::json& record);

// --resume: throws CheckpointError (one line, "an adapter trained on a different quantization") when
// the checkpoint's recorded quantization is not `now`. Checkpoints without a record pass.
void check_resume_quantization(const nlohmann::json& checkpoint_state, const nlohmann::json& now,
                               const std::filesystem::path& checkpoint);

struct BaseMemory {
  int64_t parameters = 0;           // every base weight (quantized linears by their dense shape)
  int64_t bytes_16bit = 0;          // the base stored in 16 bits: 2 bytes per parameter
  int64_t bytes_held = 0;           // as this run holds it: packed codes + absmax, the rest in its dtype
  int64_t quantized_linears = 0;    // linears held quantized
  int64_t quantized_bytes_16bit = 0, quantized_bytes_held = 0;  // those linears only
};

// Counted before any adapter is injected (a quantized linear: out × in parameters, the bytes of the
// tensors it holds).
BaseMemory base_memory(model::CausalLM& model);

// The summary's "quantization": the record plus where it came from, the compute dtype and the memory
// figures (bytes_saved: the quantized linears' 16-bit size minus what they are held in).
nlohmann::json quantization_summary(const nlohmann::json& record, bool from_checkpoint, const BaseMemory& m,
                                    at::ScalarType compute_dtype);

}  // namespace llmtune::pipelines
