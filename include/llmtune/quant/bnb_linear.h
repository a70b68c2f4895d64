// A frozen 4-bit base linear (NF4/FP4, bitsandbytes' format) behind model::Linear: it holds only the
// packed codes and absmax; forward dequantizes into the compute dtype and multiplies, and the
// gradient to the input dequantizes again instead of keeping the dense weight for backward (as
// bitsandbytes' Linear4bit does). LoRA/DoRA wrap it like a dense linear (dense_weight dequantizes).
#pragma once

#include <string>
#include <vector>

#include "llmtune/model/linear.h"
#include "llmtune/quant/bnb.h"

namespace llmtune::quant {

class FourBitLinear : public model::Linear {
 public:
  // `compute_dtype`: the dtype of the product (bitsandbytes' compute_dtype, a checkpoint's
  // bnb_4bit_compute_dtype): the input is cast to it, the weight dequantized into it, the bias added
  // in it, and the output cast back to the input's dtype, as Linear4bit.forward does. Undefined
  // computes in the input's dtype.
  FourBitLinear(FourBitTensor weight, at::Tensor bias = {}, at::ScalarType compute_dtype = at::ScalarType::Undefined);
  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override { return weight_.state.shape[1]; }
  int64_t out_features() const override { return weight_.state.shape[0]; }
  std::vector<at::Tensor> tensors() const override;
  at::Tensor dense_weight() const override { return dequantize_4bit(weight_); }
  at::Tensor bias() const override { return bias_; }
  const FourBitTensor& quantized() const { return weight_; }

 private:
  FourBitTensor weight_;
  at::Tensor bias_;
  at::ScalarType compute_dtype_;
};

struct FourBitOptions {
  FourBit type = FourBit::NF4;
  int64_t blocksize = 64;
  bool double_quant = false;
  // Module paths kept dense: a path equal to an entry or ending in "." + entry ("lm_head" keeps
  // lm_head; transformers' default skip list).
  std::vector<std::string> skip = {"lm_head"};
};

// A LinearFactory that quantizes each linear's weight as it is read (one layer's dense weight at a
// time, never the whole model), keeping skipped modules dense.
model::LinearFactory four_bit_linear_factory(const FourBitOptions& options);

}  // namespace llmtune::quant
