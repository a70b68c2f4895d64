// A frozen GPTQ-format linear (FORMATS.md §8.2) as a base: the packed codes, zero points, fp16 scales
// and g_idx held as stored; forward dequantizes into the activations' dtype for one product, and
// backward to the input dequantizes again (nothing dense is kept), as the 4-bit linear does.
// The zero-point convention (v1 "gptq" stores z − 1, "gptq_v2" stores z) is read off the stored
// values of symmetric checkpoints (every zero the same: 2^(bits−1) − 1 or 2^(bits−1)), and taken
// from checkpoint_format otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <optional>
#include <string>

#include "llmtune/io/safetensors.h"
#include "llmtune/model/linear.h"

namespace llmtune::quant {

struct GptqConfig {
  int64_t bits = 4, group_size = 128;
  bool sym = true, desc_act = false;
  // gptq | gptq_v2 (quant_method gptq), or compressed-tensors (quant_method compressed-tensors,
  // format pack-quantized: per linear weight_packed (out, in·bits/32) int32 — the same words as
  // qweight, transposed —, weight_scale (out, groups) in the model dtype, weight_zero_point
  // (out·bits/32, groups) int32 for asymmetric schemes (z itself), weight_shape).
  std::string checkpoint_format = "gptq";
};

// The GPTQ or compressed-tensors (pack-quantized, int weights, group strategy) quantization_config
// of <dir>/config.json; nullopt when there is none or it is another method. QuantError naming the
// key when it is malformed or bits is not 2, 3, 4 or 8.
std::optional<GptqConfig> read_gptq_config(const std::filesystem::path& dir);

struct GptqTensor {
  at::Tensor qweight;  // (in·bits/32, out) int32
  at::Tensor qzeros;   // (groups, out·bits/32) int32
  at::Tensor scales;   // (groups, out)
  at::Tensor g_idx;    // (in,) int32
  int64_t bits = 4;
  int64_t zero_offset = 1;  // added to the stored zeros: 1 for v1, 0 for v2
  std::string format = "gptq";  // the checkpoint's kind: gptq or compressed-tensors
};

// The tensors of `module` ("<module>.qweight", .qzeros, .scales, .g_idx) as stored (on the CPU), checked
// against an (out × in) linear of config.bits, with the zero-point convention found; QuantError
// naming `source` and the tensor otherwise. out, in: -1 to take them from the tensors.
GptqTensor read_gptq_module(const io::WeightFiles& files, const std::string& module, const GptqConfig& config,
                            int64_t out, int64_t in, const std::string& source);
// The stored tensor that marks a quantized module: "<module>.qweight" or "<module>.weight_packed".
std::string packed_suffix(const GptqConfig& config);

// Codes of `bits` bits (1..8) packed densely into int32 words along `dim` (0 or 1), lowest bits first,
// a code that crosses a word boundary split between the two words (3 bits: 32 codes in 3 words), as
// GPTQ (qweight, qzeros) and compressed-tensors (pack-quantized) store them. The dimension's length
// times `bits` must be a multiple of 32 (packs_whole).
at::Tensor pack_codes(const at::Tensor& codes, int64_t bits, int64_t dim);
// The inverse: int32 words → codes (int32), the dimension `dim` growing by 32 / bits.
at::Tensor unpack_codes(const at::Tensor& words, int64_t bits, int64_t dim);
inline bool packs_whole(int64_t n, int64_t bits) { return (n * bits) % 32 == 0; }
// The code widths llmtune quantizes to, writes and reads: 2, 3, 4 or 8 bits.
inline bool supported_bits(int64_t bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

// W (out, in) = scales[g_idx[i], j] · (q[i, j] − z[g_idx[i], j]), in `dtype`.
at::Tensor dequantize_gptq(const GptqTensor& t, at::ScalarType dtype);

class GptqLinear : public model::Linear {
 public:
  GptqLinear(GptqTensor weight, at::Tensor bias = {});
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.g_idx.size(0); }
  int64_t out_features() const override { return weight_.scales.size(1); }
  std::vector<at::Tensor> tensors() const override;
  at::Tensor dense_weight() const override { return dequantize_gptq(weight_, at::kFloat); }
  at::Tensor bias() const override { return bias_; }
  const GptqTensor& quantized() const { return weight_; }

 private:
  GptqTensor weight_;
  at::Tensor bias_;
};

// Modules whose "<path>.qweight" the files hold load as GptqLinear (moved once to `device`), the
// rest dense.
model::LinearFactory gptq_linear_factory(const GptqConfig& config, const io::WeightFiles& files,
                                         const std::filesystem::path& dir, c10::Device device);

}  // namespace llmtune::quant
