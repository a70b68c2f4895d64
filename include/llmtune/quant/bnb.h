// bitsandbytes' weight formats, byte-compatible: NF4 and FP4 blockwise 4-bit (two codes per byte,
// the even element in the high nibble, one float32 absmax per block), double quantization of the
// absmax (8-bit signed dynamic map in blocks of 256, around their mean), and LLM.int8's row-wise
// int8 with a float32 absmax per row (SCB). Pure ATen: the CPU/MPS reference path; results equal
// bitsandbytes' own CPU functions (FORMATS.md §5, §8.1).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "llmtune/ops/four_bit.h"

namespace llmtune::quant {

enum class FourBit { NF4, FP4 };

// "nf4" / "fp4" (QuantError for anything else), and back.
FourBit four_bit_from_name(const std::string& name);
const char* four_bit_name(FourBit type);

// The 16 float32 values a code stands for (bitsandbytes' quant_map), on the CPU. NF4 is sorted;
// FP4 is in bit-pattern order (sign bit 8).
at::Tensor four_bit_code(FourBit type);

// bitsandbytes' signed 8-bit dynamic map (create_dynamic_map(signed=True)): 256 sorted float32
// values in [-1, 1], the code of the double-quantized absmax.
at::Tensor dynamic_map();

struct FourBitState {
  FourBit type = FourBit::NF4;
  int64_t blocksize = 64;
  at::ScalarType dtype = at::kFloat;  // of the original weight (what dequantize returns by default)
  std::vector<int64_t> shape;         // of the original weight
  at::Tensor absmax;                  // float32 [blocks]; uint8 codes [blocks] when nested
  bool nested = false;                // double quantization:
  at::Tensor nested_absmax;           //   float32 [ceil(blocks / nested_blocksize)]
  at::Tensor nested_code;             //   float32 [256], dynamic_map()
  int64_t nested_blocksize = 256;
  double nested_offset = 0;           //   the mean subtracted from absmax before quantizing it
};

struct FourBitTensor {
  at::Tensor packed;  // uint8 [(numel + 1) / 2, 1]
  FourBitState state;
};

// Blockwise 4-bit quantization of `weight` (any float dtype, any shape; flattened row-major).
// blocksize: a power of two in [32, 4096] (QuantError otherwise). double_quant compresses absmax.
FourBitTensor quantize_4bit(const at::Tensor& weight, FourBit type, int64_t blocksize = 64, bool double_quant = false);

// The same through ATen ops only (the reference the fast CPU loop is tested against).
FourBitTensor quantize_4bit_reference(const at::Tensor& weight, FourBit type, int64_t blocksize = 64,
                                      bool double_quant = false);

// The weight back, in `dtype` (the state's dtype when Undefined), on packed's device:
// code[nibble] * absmax[block] in float32, then cast. The CPU loop or the CUDA kernel for
// fp32/bf16/fp16 on CPU/CUDA, the ATen reference elsewhere (MPS); all bit-identical.
at::Tensor dequantize_4bit(const FourBitTensor& q, at::ScalarType dtype = at::ScalarType::Undefined);

// The ATen reference of dequantize_4bit (the MPS path and the test oracle).
at::Tensor dequantize_4bit_reference(const FourBitTensor& q, at::ScalarType dtype = at::ScalarType::Undefined);

// Whether dequantize_4bit_out can write `dtype` on packed's device (fp32/bf16/fp16 on CPU or CUDA).
bool dequantize_4bit_has_fast_path(const FourBitTensor& q, at::ScalarType dtype);

// dequantize_4bit into `out` (contiguous, numel of the state's shape, fp32/bf16/fp16, on packed's
// device), e.g. a buffer reused across calls.
void dequantize_4bit_out(const FourBitTensor& q, at::Tensor& out);

// The weight as the fast paths take it: flat bytes, the code table (cached per device) and the
// absmax state, all on packed's device. QuantError when the sizes do not fit the state.
ops::FourBitBlocks four_bit_blocks(const FourBitTensor& q);

// float32 absmax per block (the nested absmax dequantized when the state is double-quantized).
at::Tensor four_bit_absmax(const FourBitState& state);

// 8-bit blockwise quantization with a sorted `code` (256 values): uint8 codes shaped like `x` and a
// float32 absmax per block; and back to float32.
std::pair<at::Tensor, at::Tensor> quantize_blockwise(const at::Tensor& x, const at::Tensor& code, int64_t blocksize);
at::Tensor dequantize_blockwise(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code, int64_t blocksize);

struct Int8Tensor {
  at::Tensor weight;  // int8 [out, in]: round(W * 127 / SCB[row])
  at::Tensor scb;     // float32 [out]: max |W| per row
};

// LLM.int8's weight format (bitsandbytes Int8Params, threshold 0).
Int8Tensor quantize_int8(const at::Tensor& weight);
at::Tensor dequantize_int8(const Int8Tensor& q, at::ScalarType dtype = at::kFloat);

}  // namespace llmtune::quant
