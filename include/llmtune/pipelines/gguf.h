// GGUF export and import for Llama-family models (FORMATS.md §6.5): HF checkpoint tensors (merged
// or not) → a GGUF file as llama.cpp's convert_hf_to_gguf.py + llama-quantize write it; llama.cpp's
// GGUF LoRA adapter; an Ollama Modelfile; and a GGUF file → a CausalLM + Tokenizer for infer/eval.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "llmtune/model/causal_lm.h"
#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines {

struct GgufExportOptions {
  // A ggml type for every quantizable 2-D weight ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1",
  // "q5_0", "q5_1", "q4_k", "q6_k") or a llama.cpp file type mix ("q4_k_m", "q4_k_s", "q6_k" as
  // llama-quantize's Q6_K, "q8_0" ...). "auto": as the converter (bf16 source → BF16, else F16).
  std::string type = "auto";
  std::string name;     // general.name; "" → the model directory's name
  bool ollama = false;  // also write <out dir>/Modelfile
};

// Tensors by transformers name ("model.layers.0.self_attn.q_proj.weight"), CPU, any float dtype.
using HfTensorSource = std::function<at::Tensor(const std::string& hf_name)>;

struct GgufExportReport {
  std::filesystem::path path;
  std::filesystem::path modelfile;  // empty unless options.ollama
  uint64_t bytes = 0;
  std::string file_type;                          // "Q4_K_M", "F16", ...
  std::map<std::string, int64_t> tensors_per_type;  // "Q4_K" → count
  double seconds = 0;
};

// config.json and the tokenizer files come from `model_dir`; the tensors named `hf_names` (the
// checkpoint's, in its order) from `source`, one at a time, so peak memory is about one tensor.
// The file appears atomically at `out`; nothing is left behind on failure.
GgufExportReport export_gguf(const std::filesystem::path& model_dir, const std::vector<std::string>& hf_names,
                             const HfTensorSource& source, const std::filesystem::path& out,
                             const GgufExportOptions& options);

// llama.cpp's GGUF LoRA adapter (convert_lora_to_gguf.py): general.type "adapter", adapter.type
// "lora", adapter.lora.alpha, blk.N.<tensor>.weight.lora_a / .lora_b (q/k permuted like the base).
// type: "f32" | "f16" | "bf16" | "q8_0". DoRA adapters are refused (llama.cpp has no DoRA).
void export_gguf_lora(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                      const std::filesystem::path& out, const std::string& type);

struct GgufModel {
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<model::CausalLM> model;
};
// Reads a GGUF file written by us or by llama.cpp (llama, qwen2, gemma architectures): the config
// from its metadata, the tokenizer from its vocabulary, weights dequantized to `dtype`.
GgufModel load_gguf_model(const std::filesystem::path& path, c10::Device device, at::ScalarType dtype);

}  // namespace llmtune::pipelines
