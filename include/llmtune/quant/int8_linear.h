// A frozen LLM.int8 base linear (bitsandbytes' Linear8bitLt with has_fp16_weights=False) behind
// model::Linear: it holds the int8 weight and its row absmax (SCB) only. Inference runs LLM.int8's
// mixed decomposition as bitsandbytes does (activations quantized row-wise through fp16, columns
// holding a value ≥ threshold multiplied in full precision); with gradients on the CPU it
// dequantizes and multiplies (bitsandbytes' CPU training path). The gradient to the input
// dequantizes again, so nothing dense is kept. LoRA/DoRA wrap it like a dense linear.
#pragma once

#include <string>
#include <vector>

#include "llmtune/model/linear.h"
#include "llmtune/quant/bnb.h"

namespace llmtune::quant {

class Int8Linear : public model::Linear {
 public:
  // weight: int8 (out, in) + float32 SCB (out,); bias: (out,) or undefined. threshold: the outlier
  // threshold of LLM.int8 (llm_int8_threshold; 0 turns the decomposition off).
  Int8Linear(Int8Tensor weight, at::Tensor bias = {}, double threshold = 6.0);
  // x: (..., in) → (..., out) in x's dtype.
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.weight.size(1); }
  int64_t out_features() const override { return weight_.weight.size(0); }
  std::vector<at::Tensor> tensors() const override;
  // float32 (out, in): int8 · SCB / 127, as bitsandbytes' int8_vectorwise_dequant (and PEFT's merge).
  at::Tensor dense_weight() const override { return dequantize_int8(weight_, at::kFloat); }
  at::Tensor bias() const override { return bias_; }
  const Int8Tensor& quantized() const { return weight_; }
  double threshold() const { return threshold_; }

 private:
  Int8Tensor weight_;
  at::Tensor bias_;
  double threshold_;
};

// LLM.int8 inference product, as bitsandbytes' MatMul8bitLt computes it (no autograd):
// x: (..., in) → (..., out) in x's dtype. bias may be undefined.
at::Tensor int8_mixed_matmul(const at::Tensor& x, const Int8Tensor& weight, const at::Tensor& bias, double threshold);

// A LinearFactory that quantizes each linear to int8 while it is read (as transformers'
// load_in_8bit does: the weight through fp16, then row-wise), keeping modules matched by `skip`
// dense (an entry matches the path or its last components, "lm_head").
model::LinearFactory int8_linear_factory(std::vector<std::string> skip = {"lm_head"}, double threshold = 6.0);

}  // namespace llmtune::quant
