// `llmtune distill`: finetune's run (data, trainer, checkpoints, resume) with the loss replaced by
// knowledge distillation from a teacher model, run online under no-grad or read from a top-k cache
// of its log-probabilities built once (`--cache-teacher`).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "llmtune/pipelines/quantize_on_load.h"
#include "llmtune/train/distill_loss.h"

namespace llmtune::pipelines {

struct FinetuneParams;

struct DistillParams {
  std::string teacher;                  // teacher.path: directory, hub repo id or .gguf ("" with a cache only)
  std::string teacher_adapter;          // teacher.adapter: a PEFT adapter applied to the teacher ("": none)
  std::string teacher_device = "auto";  // auto: the student's device
  std::string teacher_dtype = "auto";   // auto: the student's compute dtype
  QuantizeOnLoad teacher_quantize;  // none | nf4 | fp4 | int8: quantized while it loads
  std::filesystem::path cache;          // teacher.cache: a cache built by --cache-teacher ("": online)
  train::DistillLossOptions loss;       // loss.vocab is found at run time
  bool truncate_vocab = false;          // distill.vocab: truncate (only the shared, identical prefix compared)
  int64_t top_k = 64;                   // distill.top_k: log-probabilities kept per position in a cache
};

// Runs the teacher once over the training data of `params` (its distill settings) and writes the
// top-k cache to `out` (sharded safetensors + teacher_cache.json); returns a summary.
nlohmann::json build_teacher_cache(const FinetuneParams& params, const std::filesystem::path& out);

}  // namespace llmtune::pipelines
