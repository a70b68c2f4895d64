// A 16-bit model's linears quantized while it loads (eval/infer/serve --quantize, distill's
// teacher.quantize): bitsandbytes' formats, as transformers' BitsAndBytesConfig quantizes on load.
#pragma once

#include <cstdint>
#include <string>

namespace llmtune::pipelines {

struct QuantizeOnLoad {
  std::string type = "none";  // none | nf4 | fp4 | int8
  bool double_quant = false;  // nf4/fp4: the block absmax quantized too (bnb_4bit_use_double_quant)
  int64_t blocksize = 64;     // nf4/fp4: weights per absmax block, a power of two in [32, 4096]
};

}  // namespace llmtune::pipelines
