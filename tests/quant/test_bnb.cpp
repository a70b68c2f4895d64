// bitsandbytes' formats against bitsandbytes itself (its CPU functions, through the interop
// harness): NF4/FP4 packed bytes, absmax and dequantized weights bit for bit on random and
// adversarial blocks, the double-quantized absmax, the dynamic map, and LLM.int8's CB/SCB.
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include "llmtune/quant/bnb.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

using testing::call_python;

// Blocks that stress the rounding: values exactly on the midpoints between codes (absmax a power
// of two, so scaling is exact), one outlier per block, subnormals, constant and all-zero blocks,
// and a partial last block.
at::Tensor adversarial(FourBit type, int64_t blocksize) {
  const at::Tensor code = four_bit_code(type);
  auto [sorted, order] = code.sort();
  at::Tensor mid = (sorted.narrow(0, 0, 15) + sorted.narrow(0, 1, 15)) / 2;
  std::vector<at::Tensor> parts;
  at::Tensor ties = at::cat({mid, at::full({1}, 1.0f)}) * 4.0f;  // absmax 4: x / 4 is exact
  parts.push_back(ties.repeat({(blocksize + 15) / 16}).narrow(0, 0, blocksize));
  at::Tensor outlier = at::randn({blocksize}) * 1e-3;
  outlier[blocksize / 2] = 1e4;
  parts.push_back(outlier);
  parts.push_back(at::randn({blocksize}) * 1e-40);  // subnormal floats
  parts.push_back(at::full({blocksize}, -0.375f));
  parts.push_back(at::zeros({blocksize}));
  parts.push_back(at::randn({blocksize / 2 + 3}));  // partial, odd count
  return at::cat(parts);
}

struct Case {
  FourBit type;
  int64_t blocksize;
  at::ScalarType dtype;
};

class BnbFourBit : public ::testing::TestWithParam<Case> {};

TEST_P(BnbFourBit, PackedBytesAbsmaxAndDequantizedEqualBitsandbytes) {
  const Case c = GetParam();
  at::manual_seed(7);
  // Rows a multiple of the block size: bitsandbytes' native CPU dequantizer (0.50) takes blocks
  // per row and mislabels them otherwise; the flat-block format is what files hold (and what its
  // default and CUDA paths, and ours, compute). The adversarial vector covers a partial block.
  for (const at::Tensor& w : {(at::randn({48, 2 * c.blocksize}) * 0.05).to(c.dtype), adversarial(c.type, c.blocksize).to(c.dtype)}) {
    const FourBitTensor ours = quantize_4bit(w, c.type, c.blocksize);
    auto ref = call_python("bnb_quantize_4bit", {w}, {{"blocksize", c.blocksize}, {"quant_type", four_bit_name(c.type)}});
    ASSERT_TRUE(at::equal(ours.packed, ref[0])) << "packed codes differ";
    ASSERT_TRUE(at::equal(ours.state.absmax, ref[1])) << "absmax differs";
    const at::Tensor back = dequantize_4bit(ours);
    EXPECT_EQ(back.scalar_type(), c.dtype);
    EXPECT_TRUE(at::equal(back, ref[2])) << "dequantized weights differ";
  }
}

INSTANTIATE_TEST_SUITE_P(Types, BnbFourBit,
                         ::testing::Values(Case{FourBit::NF4, 64, at::kFloat}, Case{FourBit::NF4, 64, at::kBFloat16},
                                           Case{FourBit::NF4, 32, at::kHalf}, Case{FourBit::NF4, 256, at::kFloat},
                                           Case{FourBit::FP4, 64, at::kFloat}, Case{FourBit::FP4, 128, at::kBFloat16}));

TEST(BnbFourBit, DequantizesBitsandbytesOwnBytes) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({33, 128}).to(at::kBFloat16);
  auto ref = call_python("bnb_quantize_4bit", {w}, {{"blocksize", 64}, {"quant_type", "nf4"}});
  FourBitTensor theirs;
  theirs.packed = ref[0];
  theirs.state.absmax = ref[1];
  theirs.state.shape = {33, 128};
  theirs.state.dtype = at::kBFloat16;
  EXPECT_TRUE(at::equal(dequantize_4bit(theirs), ref[2]));
  auto deq = call_python("bnb_dequantize_4bit", {ref[0], ref[1]},
                         {{"blocksize", 64}, {"quant_type", "nf4"}, {"shape", {33, 128}}, {"dtype", "float32"}});
  EXPECT_TRUE(at::equal(dequantize_4bit(theirs, at::kFloat), deq[0]));
}

TEST(BnbDoubleQuant, DynamicMapEqualsBitsandbytes) {
  EXPECT_TRUE(at::equal(dynamic_map(), call_python("bnb_dynamic_map", {})[0]));
}

TEST(BnbDoubleQuant, NestedAbsmaxEqualsBitsandbytes) {
  at::manual_seed(11);
  // 300 blocks of 64: two nested blocks of 256, the second partial.
  const at::Tensor w = (at::randn({300, 64}) * at::randn({300, 1}).abs()).to(at::kBFloat16);
  const FourBitTensor ours = quantize_4bit(w, FourBit::NF4, 64, /*double_quant=*/true);
  auto ref = call_python("bnb_quantize_4bit", {w}, {{"blocksize", 64}, {"quant_type", "nf4"}, {"double_quant", true}});
  EXPECT_TRUE(at::equal(ours.packed, ref[0]));
  EXPECT_FLOAT_EQ(static_cast<float>(ours.state.nested_offset), ref[5].item<float>());
  EXPECT_TRUE(at::equal(ours.state.nested_absmax, ref[3]));
  EXPECT_TRUE(at::equal(ours.state.nested_code, ref[4]));
  // bitsandbytes quantizes the absmax with its native CPU kernel, which takes the neighbouring code
  // for values within ~1e-5 (relative) of a midpoint between two codes (0.14% of random values);
  // its PyTorch path and ours take the nearest. So: codes equal or one step apart, in under 2% of
  // the blocks; equal codes give bit-equal absmax and weights; one step moves an absmax by at most
  // the map's widest step (0.0141) times the nested block's absmax.
  const at::Tensor step = (ours.state.absmax.to(at::kInt) - ref[1].to(at::kInt)).abs();
  EXPECT_LE(step.max().item<int>(), 1);
  EXPECT_LE(step.sum().item<int>(), ours.state.absmax.numel() / 50);
  const at::Tensor same = step == 0;
  const at::Tensor absmax = four_bit_absmax(ours.state);
  EXPECT_TRUE(at::equal(absmax.masked_select(same), ref[6].masked_select(same)));
  const at::Tensor nested = ours.state.nested_absmax.repeat_interleave(256).narrow(0, 0, absmax.numel());
  EXPECT_TRUE(((absmax - ref[6]).abs() <= nested * 0.0141f + 1e-6f).all().item<bool>());
  const at::Tensor same_weights = same.repeat_interleave(64).view({300, 64});
  EXPECT_TRUE(at::equal(dequantize_4bit(ours).masked_select(same_weights), ref[2].masked_select(same_weights)));
}

TEST(BnbInt8, WeightAndScbEqualInt8Params) {
  at::manual_seed(5);
  for (auto dtype : {at::kHalf, at::kBFloat16, at::kFloat}) {
    at::Tensor w = at::randn({40, 72}).to(dtype);
    w[3][5] = 8.0;  // an outlier row
    const Int8Tensor ours = quantize_int8(w);
    auto ref = call_python("bnb_int8", {w});
    EXPECT_TRUE(at::equal(ours.weight, ref[0])) << c10::toString(dtype);
    EXPECT_TRUE(at::equal(ours.scb, ref[1])) << c10::toString(dtype);
    EXPECT_TRUE(at::equal(dequantize_int8(ours), ref[2])) << c10::toString(dtype);
  }
}

TEST(BnbFourBit, BadInputIsAQuantError) {
  const at::Tensor w = at::randn({8, 64});
  EXPECT_THROW(quantize_4bit(w, FourBit::NF4, 48), QuantError);
  EXPECT_THROW(quantize_4bit(w, FourBit::NF4, 8192), QuantError);
  EXPECT_THROW(quantize_4bit(at::zeros({8, 64}, at::kInt), FourBit::NF4), QuantError);
  EXPECT_THROW(four_bit_from_name("int4"), QuantError);
  FourBitTensor q = quantize_4bit(w, FourBit::NF4);
  q.state.shape = {16, 64};  // more weights than packed bytes
  EXPECT_THROW(dequantize_4bit(q), QuantError);
  q = quantize_4bit(w, FourBit::NF4);
  q.state.blocksize = 32;  // absmax count does not match
  EXPECT_THROW(dequantize_4bit(q), QuantError);
  EXPECT_THROW(quantize_int8(at::randn({4})), QuantError);
}

}  // namespace
}  // namespace llmtune::quant
