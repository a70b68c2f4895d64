// A model (+ adapter) written as a bitsandbytes checkpoint, exactly as transformers' save_pretrained
// writes a model loaded with BitsAndBytesConfig (FORMATS.md §5.4, §8.1): each layer linear quantized
// as it is read (NF4/FP4 with optional double quantization, or LLM.int8), everything else kept in its
// stored dtype, config.json with quantization_config. Shared by `quantize` and `merge --quantize`.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace llmtune::quant {
struct BnbConfig;
}

namespace llmtune::pipelines {

class MergedWeights;

// The bitsandbytes types `quantize --type` and `merge --quantize` accept.
bool is_bnb_type(const std::string& type);  // nf4 | fp4 | int8

struct BnbExportOptions {
  std::string type;           // nf4 | fp4 | int8
  bool double_quant = false;  // 4-bit only (bnb_4bit_use_double_quant)
  int64_t blocksize = 64;     // 4-bit only: a power of two in [32, 4096]
  uint64_t shard_size_bytes = 5'000'000'000;
};

// Checks options (type, blocksize, double quant with int8) with one-line ConfigErrors naming the flag.
void check_bnb_options(const BnbExportOptions& options);

struct BnbExportReport {
  std::vector<std::filesystem::path> files;  // weight files, inside the directory written
  uint64_t bytes = 0;                        // tensor bytes written
  int64_t quantized_modules = 0, kept_tensors = 0;
  std::string compute_dtype;  // bnb_4bit_compute_dtype written
  double seconds = 0;
};

// Writes the weights and config.json of `weights` into the existing directory `dir` (a staging
// directory: the caller makes it appear atomically, and copies the tokenizer files). Each layer
// linear is read, quantized and written one at a time (a 4-bit module is quantized twice, as its
// float32 and uint8 tensors go to different places of the file), so peak memory is about one layer.
BnbExportReport export_bnb(const MergedWeights& weights, const std::filesystem::path& dir, const BnbExportOptions& options);

// <dir>/config.json from <model_dir>/config.json: the dtype set to `dtype` (Undefined keeps it) and
// quantization_config replaced by `bnb` (transformers' fields, in its sorted key order) or removed.
void write_output_config(const std::filesystem::path& model_dir, const std::filesystem::path& dir, c10::ScalarType dtype,
                         const std::optional<quant::BnbConfig>& bnb);

}  // namespace llmtune::pipelines
