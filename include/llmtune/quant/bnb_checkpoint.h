// bitsandbytes checkpoints as transformers saves them: config.json's quantization_config, the
// per-linear tensors of a 4-bit (packed codes + absmax + quant_state JSON) or 8-bit (int8 weight +
// SCB) module, read straight into FourBitLinear / Int8Linear, and written back (FORMATS.md §5.4, §8.1).
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/linear.h"
#include "llmtune/quant/bnb.h"

namespace llmtune::quant {

// config.json "quantization_config" with quant_method "bitsandbytes" (transformers' BitsAndBytesConfig).
struct BnbConfig {
  bool load_in_4bit = false, load_in_8bit = false;
  FourBit type = FourBit::FP4;                // bnb_4bit_quant_type
  bool double_quant = false;                  // bnb_4bit_use_double_quant
  at::ScalarType compute_dtype = at::kFloat;  // bnb_4bit_compute_dtype
  std::string quant_storage = "uint8";        // bnb_4bit_quant_storage (a torch dtype name)
  std::vector<std::string> skip_modules;      // llm_int8_skip_modules (empty when null)
  double int8_threshold = 6.0;                // llm_int8_threshold
};

// The bitsandbytes quantization_config of <model_dir>/config.json; nullopt when the key is absent.
// Throws QuantError naming config.json and the key when it is malformed, another quant_method
// ("awq", ... : not supported yet; gptq and compressed-tensors give nullopt: gptq_linear.h reads them), or neither / both of load_in_4bit and load_in_8bit.
std::optional<BnbConfig> read_bnb_config(const std::filesystem::path& model_dir);

// The quantization_config object transformers writes for `config` (FORMATS.md §5.4), as JSON text.
std::string bnb_config_json(const BnbConfig& config);

// True when the checkpoint stores `module_path` ("model.layers.0.self_attn.q_proj") quantized:
// 4-bit (`weight` + `weight.absmax` + `weight.quant_state.bitsandbytes__nf4|fp4`) or 8-bit
// (int8 `weight` + `SCB`).
bool is_bnb_quantized_module(const io::WeightFiles& files, const std::string& module_path);

// The packed quant_state JSON (`weight.quant_state.bitsandbytes__*`, uint8 bytes) of a 4-bit module,
// with its tensors (absmax, nested_absmax, nested_quant_map) read from `files` and checked against
// the packed weight: a missing key, an unsupported blocksize or quant_type, absmax of the wrong
// length or a shape that does not match the packed bytes throw QuantError naming the key.
FourBitTensor read_four_bit_module(const io::WeightFiles& files, const std::string& module_path);

// The int8 weight and SCB of an 8-bit module (checked: int8 (out, in), float32 (out)).
Int8Tensor read_int8_module(const io::WeightFiles& files, const std::string& module_path);

// The dense (out, in) weight of a quantized linear read from the file, in `dtype` (for merge/export).
at::Tensor dequantize_bnb_module(const io::WeightFiles& files, const std::string& module_path,
                                 at::ScalarType dtype);

// A LinearFactory for a checkpoint saved with `config`: FourBitLinear / Int8Linear built directly
// from the stored packed tensors (moved once to `device`), DenseLinear for the modules the
// checkpoint stores dense (the skip list). `dir` names the checkpoint in errors.
model::LinearFactory bnb_checkpoint_linear_factory(const BnbConfig& config, const io::WeightFiles& files,
                                                   const std::filesystem::path& dir, c10::Device device);

// The packed quant_state JSON text of a 4-bit tensor (what bitsandbytes' QuantState.as_dict packs).
std::string four_bit_state_json(const FourBitState& state);

// Exactly the keys/dtypes transformers + bitsandbytes save for one quantized linear (without bias):
// 4-bit: weight, weight.absmax, weight.quant_map, [weight.nested_absmax, weight.nested_quant_map],
// weight.quant_state.bitsandbytes__nf4|fp4; 8-bit: weight, SCB, weight_format. `quant_storage`
// reinterprets the packed 4-bit bytes as that dtype ("uint8", "bfloat16", ...), as transformers does.
std::vector<std::pair<std::string, at::Tensor>> bnb_module_tensors(const std::string& module_path,
                                                                   const FourBitTensor& weight,
                                                                   const std::string& quant_storage = "uint8");
std::vector<std::pair<std::string, at::Tensor>> bnb_module_tensors(const std::string& module_path,
                                                                   const Int8Tensor& weight);

}  // namespace llmtune::quant
