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
  // A llama.cpp file type, as llama-quantize names it (case-insensitive): f32, f16, bf16 (every
  // matrix of that type, as convert_hf_to_gguf.py --outtype); q8_0 (every matrix Q8_0, the
  // converter's, F16 where ne[0] % 32 != 0); q4_0, q4_1, q5_0, q5_1, q4_k_s, q4_k_m, q5_k_s, q5_k_m,
  // q6_k, and q4_k / q5_k as aliases of q4_k_m / q5_k_m: llama-quantize's per-tensor mix
  // (llama_tensor_get_type: output and tied token_embd → Q6_K, attn_v (or a fused attn_qkv) /
  // ffn_down of use_more_bits layers → Q6_K in *_M, ... and its fallbacks where ne[0] does not
  // fit the block), quantized from the source values. 1-D tensors, norms and GPT-2's
  // position_embd are F32. "auto": as the converter (bf16 source → bf16, else f16). QuantError
  // for anything else.
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
// type: "f32" | "f16" | "bf16" | "q8_0" | "auto". adapter.lora.alpha is chosen so that llama.cpp's
// alpha / r equals PEFT's scaling (rsLoRA included); modules needing different values, DoRA,
// embedding LoRA, lora_bias and modules_to_save are AdapterErrors.
void export_gguf_lora(const std::filesystem::path& model_dir, const std::filesystem::path& adapter_dir,
                      const std::filesystem::path& out, const std::string& type);

struct GgufModel {
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::unique_ptr<model::CausalLM> model;
};
// Reads a GGUF file written by us or by llama.cpp (the architectures of model::supported_gguf_archs:
// llama, qwen2, qwen3, gemma, gemma2, gemma3, phi3, gpt2): the config
// from its metadata, the tokenizer from its vocabulary, weights dequantized to `dtype`.
GgufModel load_gguf_model(const std::filesystem::path& path, c10::Device device, at::ScalarType dtype);

}  // namespace llmtune::pipelines
