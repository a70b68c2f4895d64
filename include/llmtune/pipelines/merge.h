// `llmtune merge`: a PEFT adapter folded into its base model, written as a standard Hugging Face
// directory (sharded safetensors + index, config.json, tokenizer files, generation_config.json)
// and/or a GGUF file, tensor by tensor; and llama.cpp's GGUF LoRA adapter export.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/config.h"
#include "llmtune/peft/method.h"
#include "llmtune/pipelines/bnb_export.h"
#include "llmtune/pipelines/gguf.h"

namespace llmtune::quant {
struct BnbConfig;
struct GptqConfig;
}

namespace llmtune::pipelines {

// A base checkpoint with an optional adapter folded in, one tensor at a time (memory-mapped base,
// merged weights computed on request in fp32 and cast to the output dtype). A bitsandbytes base
// (4-bit or 8-bit, config.json quantization_config) is seen dense: each quantized linear is one
// "<module>.weight" of its original shape and dtype, dequantized on request; its packed side
// tensors (absmax, quant_map, quant_state, SCB, ...) are not listed.
class MergedWeights {
 public:
  // adapter: "" for none. out_dtype: at::ScalarType::Undefined keeps each tensor's stored dtype.
  // Every adapter module is checked against the base here (a missing module or a shape mismatch is
  // an AdapterError naming the tensor), before anything is written.
  MergedWeights(const std::filesystem::path& model_dir, const std::string& adapter, at::ScalarType out_dtype);

  const std::filesystem::path& model_dir() const { return model_dir_; }
  const model::ModelConfig& config() const { return config_; }
  bool has_adapter() const { return adapter_ != nullptr; }
  const peft::SavedAdapter& adapter() const { return *adapter_; }
  const std::vector<std::string>& names() const { return names_; }  // layer-natural order
  at::ScalarType out_dtype() const { return out_dtype_; }            // Undefined: as stored
  uint64_t n_bytes(const std::string& name) const;                  // in the output dtype
  io::TensorSpec spec(const std::string& name) const;               // name, output dtype, shape
  // CPU, output dtype; a tensor of its own (the base's mapped pages are released once read).
  at::Tensor get(const std::string& name) const;

  // Modules whose merged weight (in the output dtype) came out bit-identical to the base weight,
  // counted by get(); and how many of those have an all-zero lora_B.
  int64_t unchanged_modules() const { return unchanged_; }
  int64_t zero_b_modules() const { return zero_b_; }
  int64_t adapter_modules() const { return adapter_ ? static_cast<int64_t>(adapter_->modules.size()) : 0; }

  // A quantized base: "nf4", "fp4" (+ " double-quant"), "int8" or "gptq 4-bit"; "" for a dense base.
  const std::string& base_quantization() const { return base_quantization_; }
  int64_t quantized_base_modules() const { return static_cast<int64_t>(bnb_modules_.size()); }
  // Whether `name` is a quantized linear's weight of a bitsandbytes base.
  bool is_dequantized(const std::string& name) const { return bnb_modules_.count(name) > 0; }
  // Whether `name` is a linear weight stored (in, out), as GPT-2's Conv1D (spec() and get() give it
  // so; the adapter is folded in (out, in)).
  bool stored_in_out(const std::string& name) const { return conv1d_.count(name) > 0; }

 private:
  at::ScalarType dtype_for(at::ScalarType stored) const;
  void find_bnb_modules(const quant::BnbConfig& config);
  void find_gptq_modules(const quant::GptqConfig& config);

  std::filesystem::path model_dir_;
  model::ModelConfig config_;
  io::WeightFiles checkpoint_;
  std::unique_ptr<peft::SavedAdapter> adapter_;
  std::map<std::string, std::string> module_of_weight_;  // "<module>.weight" → module path
  at::ScalarType out_dtype_;
  std::vector<std::string> names_;
  // A bitsandbytes base: "<module>.weight" → its dense dtype and shape.
  std::map<std::string, io::TensorSpec> bnb_modules_;
  std::set<std::string> hidden_;  // their packed side tensors
  std::set<std::string> conv1d_;  // linear weights stored (in, out) (GPT-2)
  std::string base_quantization_;
  std::shared_ptr<const quant::GptqConfig> gptq_;  // a GPTQ base
  // Counted once per tensor, however often get() is asked for it.
  mutable std::set<std::string> unchanged_names_;
  mutable int64_t unchanged_ = 0, zero_b_ = 0;
};

// "model.layers.10.mlp" after "model.layers.9.mlp": numbers compare by value.
bool natural_less(const std::string& a, const std::string& b);

// Tokenizer files into `out_dir`: the adapter directory's when it carries its own (with the chat
// template it was trained with), else the base's; generation_config.json from the base, or derived
// from config.json as transformers derives it. Returns how many tokenizer files were copied.
int copy_tokenizer_and_generation_files(const std::filesystem::path& base_dir, const std::filesystem::path& adapter_dir,
                                        const std::filesystem::path& out_dir, const model::ModelConfig& config);

struct MergeParams {
  std::string model;    // base model directory or hub-cache repo id; "" → adapter_config's base_model_name_or_path
  std::string adapter;  // PEFT adapter directory, or a finetune run directory (its adapter/)
  // Hugging Face output directory. "" → written to the default (next to the adapter: <run>/merged,
  // or <adapter>-merged) unless only GGUF outputs were asked for.
  std::filesystem::path output;
  std::string dtype;  // "" → the base's dtype; bf16 | fp16 | fp32
  uint64_t shard_size_bytes = 5'000'000'000;  // transformers' default max_shard_size "5GB"
  bool force = false;                          // replace existing outputs
  bool refuse_non_finite = false;              // an adapter holding NaN/inf: an error instead of a warning
  std::filesystem::path gguf;                  // also write the merged model as GGUF ("" none)
  GgufExportOptions gguf_options;
  std::filesystem::path lora_gguf;  // also write the adapter alone in llama.cpp's GGUF LoRA format
  std::string lora_gguf_type = "f16";
  // Non-empty: the Hugging Face output is a bitsandbytes checkpoint of this type (nf4 | fp4 | int8)
  // instead of 16-bit shards.
  BnbExportOptions quantize;
};

struct MergeReport {
  std::filesystem::path model_dir, adapter_dir;
  std::filesystem::path output;  // "" when no HF directory was written
  std::vector<std::filesystem::path> files;
  std::string dtype;
  int64_t tensors = 0, adapter_modules = 0, unchanged_modules = 0, zero_b_modules = 0;
  double merge_seconds = 0;
  std::filesystem::path gguf;
  GgufExportReport gguf_report;
  std::filesystem::path lora_gguf;
  std::string base_quantization;     // "" for a dense base; else what was dequantized ("nf4", "int8", ...)
  int64_t dequantized_modules = 0;
  std::string quantize;              // the output's bitsandbytes type, "" for 16-bit
  BnbExportReport quantize_report;
  double seconds = 0;
  uint64_t peak_rss_bytes = 0;
};

// Everything is validated (inputs, adapter vs base, existing outputs) before any output appears;
// each output appears whole (AtomicDir / atomic files) or not at all.
MergeReport run_merge(const MergeParams& params);

}  // namespace llmtune::pipelines
