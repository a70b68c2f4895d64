// `llmtune quantize` (GGUF types for now): a model directory (+ an optional adapter, folded in on
// the fly) → a GGUF file of the requested type or llama.cpp file mix, with an optional perplexity
// check of the result against the source on an evaluation set.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "llmtune/pipelines/eval.h"
#include "llmtune/pipelines/gguf.h"

namespace llmtune::pipelines {

struct QuantizeParams {
  std::string model;    // directory or hub-cache repo id
  std::string adapter;  // "" for none
  std::filesystem::path output;  // the .gguf file
  GgufExportOptions gguf;        // type (required), name, ollama
  bool force = false;
  // With eval_data: perplexity of the source (+adapter) and of the written GGUF on it.
  std::string eval_data;
  int64_t eval_max_seq_len = 512;
  int64_t eval_batch_size = 8;
  std::string device = "auto", dtype = "auto";  // for the evaluation only
};

struct QuantizeReport {
  GgufExportReport gguf;
  uint64_t source_bytes = 0;  // the source weights as stored
  std::optional<EvalResult> source_eval, gguf_eval;
  double seconds = 0;
  uint64_t peak_rss_bytes = 0;
};

QuantizeReport run_quantize(const QuantizeParams& params);

}  // namespace llmtune::pipelines
