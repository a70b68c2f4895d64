// `llmtune quantize`: a model directory (+ an optional adapter, folded in on the fly) → a GGUF file
// of the requested type or llama.cpp file mix, or a bitsandbytes (nf4 / fp4 / int8) Hugging Face
// directory as transformers saves one; with an optional perplexity check of the result against the
// source on an evaluation set.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "llmtune/pipelines/bnb_export.h"
#include "llmtune/pipelines/eval.h"
#include "llmtune/pipelines/gguf.h"
#include "llmtune/pipelines/gptq_export.h"

namespace llmtune::pipelines {

struct QuantizeParams {
  std::string model;    // directory or hub-cache repo id (a bitsandbytes one is dequantized first)
  std::string adapter;  // "" for none
  std::filesystem::path output;  // the .gguf file, or the bitsandbytes directory
  // bnb.type non-empty (nf4 | fp4 | int8): a bitsandbytes directory; else gguf.type: a GGUF file.
  BnbExportOptions bnb;
  GgufExportOptions gguf;        // type, name, ollama
  GptqExportOptions gptq;        // method gptq | rtn: a GPTQ-format directory (then bnb and gguf are unused)
  bool force = false;
  // With eval_data: perplexity of the source (+adapter) and of the written result on it.
  std::string eval_data;
  int64_t eval_max_seq_len = 512;
  int64_t eval_batch_size = 8;
  std::string device = "auto", dtype = "auto";  // for the evaluation only
};

struct QuantizeReport {
  std::string type;  // "nf4", ... or the GGUF file type ("Q4_K_M")
  std::filesystem::path output;
  uint64_t bytes = 0;         // tensor bytes written (bnb) or the file size (GGUF)
  GgufExportReport gguf;      // GGUF types
  BnbExportReport bnb;        // bitsandbytes types
  GptqExportReport gptq;      // gptq / rtn
  uint64_t source_bytes = 0;  // the source weights (dense, in their stored dtype)
  std::optional<EvalResult> source_eval, result_eval;
  std::optional<EvalResult> rtn_eval;  // --method gptq with --eval-data: RTN with the same bits and groups, the baseline
  double seconds = 0;
  uint64_t peak_rss_bytes = 0;
};

QuantizeReport run_quantize(const QuantizeParams& params);
// The gptq / rtn path of run_quantize (params.gptq.method set).
QuantizeReport run_gptq_quantize(const QuantizeParams& params);

}  // namespace llmtune::pipelines
