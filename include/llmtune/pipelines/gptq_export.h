// `llmtune quantize --method gptq|rtn`: every decoder linear quantized to 2/4/8-bit integer codes
// with per-group scales and zero points — GPTQ on calibration Hessians gathered layer by layer
// (each quantized layer's outputs feed the next), or round-to-nearest — written as a Hugging Face
// directory in the GPTQ checkpoint format (FORMATS.md §8.2: qweight, qzeros with the v1 "z − 1"
// convention, fp16 scales, g_idx; quantize_config.json and config.json quantization_config).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/pipelines/calibration.h"
#include "llmtune/quant/gptq.h"

namespace llmtune::pipelines {

struct GptqExportOptions {
  std::string method;         // gptq | rtn ("" : not this path)
  quant::GptqOptions gptq;    // bits, group size, sym, act-order, damp, block size
  std::string format = "gptq";  // gptq | compressed-tensors
  CalibrationParams calibration;  // gptq: required
  int64_t tokens_per_forward = 8192;
};

struct GptqLayerReport {
  std::string path;
  int64_t out = 0, in = 0;
  double output_error = 0;  // mean over calibration sequences of Σ_tokens ‖(W − Ŵ)x‖² (gptq only)
  double damp = 0;          // the dampening used
};

struct GptqExportReport {
  std::vector<GptqLayerReport> layers;
  int64_t calibration_sequences = 0, calibration_seq_len = 0;
  double quantize_seconds = 0;
  std::vector<std::string> kept;  // tensors written as stored (embeddings, norms, lm_head)
};

nlohmann::json gptq_quantization_config(const GptqExportOptions& options);
// config.json's quantization_config for --format compressed-tensors (pack-quantized, as llm-compressor writes it).
nlohmann::json compressed_tensors_config(const GptqExportOptions& options);

struct QuantizedLinear {
  std::string path;
  quant::GroupQuantized q;
  at::Tensor bias;
};

// Quantizes every decoder linear of `model` (not lm_head) in place, each replaced in its slot by a
// dense linear of its dequantized weight: `gptq` on calibration ids (N, T) layer by layer
// (model::run_layerwise, each quantized layer's outputs feeding the next), or `rtn` (ids unused).
// Returns them in model order; per-linear figures go to report.layers.
std::vector<QuantizedLinear> quantize_model_gptq(model::CausalLM& model, const GptqExportOptions& options,
                                                 const at::Tensor& calibration_ids, GptqExportReport& report);

}  // namespace llmtune::pipelines
