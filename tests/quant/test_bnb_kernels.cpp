// The 4-bit fast paths against the ATen reference, on every device present: the CPU loop and the
// CUDA kernel for dequantize (bit for bit, NF4/FP4, block sizes 32..4096, nested or not, odd sizes
// and partial blocks, fp32/bf16/fp16), the CPU quantize loop (same bytes and absmax), the CUDA
// batch-1 gemv against dequantize + matmul, and FourBitLinear's forward/backward on each device.
// CUDA cases report themselves skipped where there is no GPU or no kernels.
#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "llmtune/ops/four_bit.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/quant/bnb.h"
#include "llmtune/quant/bnb_linear.h"
#include "support/interop.h"

namespace llmtune::quant {
namespace {

FourBitTensor to_device(FourBitTensor q, const c10::Device& device) {
  q.packed = q.packed.to(device);
  q.state.absmax = q.state.absmax.to(device);
  if (q.state.nested) {
    q.state.nested_absmax = q.state.nested_absmax.to(device);
    q.state.nested_code = q.state.nested_code.to(device);
  }
  return q;
}

std::string describe(FourBit type, int64_t blocksize, bool nested, at::IntArrayRef shape, at::ScalarType dtype) {
  return std::string(four_bit_name(type)) + " block " + std::to_string(blocksize) + (nested ? " nested" : "") +
         " shape " + c10::str(shape) + " " + c10::toString(dtype);
}

// Values that stress the rounding: code midpoints times a power of two, an outlier, subnormals,
// a constant run, zeros, then random values; `n` of them.
at::Tensor hard_values(FourBit type, int64_t n) {
  auto [sorted, order] = four_bit_code(type).sort();
  const at::Tensor mid = (sorted.narrow(0, 0, 15) + sorted.narrow(0, 1, 15)) / 2;
  at::Tensor outlier = at::randn({40}) * 1e-3;
  outlier[17] = 1e4;
  const at::Tensor parts = at::cat({mid * 4.0f, at::full({1}, 4.0f), outlier, at::randn({70}) * 1e-40,
                                    at::full({70}, -0.375f), at::zeros({70}), at::randn({std::max<int64_t>(n, 1)})});
  return parts.narrow(0, 0, n);
}

class BnbKernels : public ::testing::TestWithParam<c10::DeviceType> {
 protected:
  void SetUp() override {
    if (GetParam() == c10::kCUDA) {
      if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device on this machine: the 4-bit CUDA kernel tests did not run";
      if (!ops::kernels_built()) GTEST_SKIP() << "llmtune built without its CUDA kernels";
    }
  }
  c10::Device device() const { return c10::Device(GetParam()); }
};

TEST_P(BnbKernels, DequantizeEqualsTheReferenceBitForBit) {
  at::manual_seed(21);
  const std::vector<std::vector<int64_t>> shapes = {{33, 128}, {7, 13}, {1, 4097}, {300, 64}, {3, 1001}, {256, 4096}};
  for (FourBit type : {FourBit::NF4, FourBit::FP4}) {
    for (int64_t blocksize : {32, 64, 128, 4096}) {
      for (bool nested : {false, true}) {
        for (const auto& shape : shapes) {
          const int64_t n = shape[0] * shape[1];
          const at::Tensor w = (n < 4000 ? hard_values(type, n) : at::randn({n}) * 0.05).view(shape);
          const FourBitTensor q = to_device(quantize_4bit(w, type, blocksize, nested), device());
          ASSERT_TRUE(dequantize_4bit_has_fast_path(q, at::kFloat));
          for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
            const at::Tensor got = dequantize_4bit(q, dtype);
            const at::Tensor want = dequantize_4bit_reference(q, dtype);
            ASSERT_EQ(got.device(), device());
            ASSERT_EQ(got.scalar_type(), dtype);
            ASSERT_EQ(got.sizes(), at::IntArrayRef(shape));
            ASSERT_TRUE(at::equal(got, want)) << describe(type, blocksize, nested, shape, dtype) << ": max diff "
                                              << testing::max_abs_diff(got.to(at::kFloat), want.to(at::kFloat));
          }
        }
      }
    }
  }
}

TEST_P(BnbKernels, DequantizeIntoABufferAndFromOtherStorage) {
  at::manual_seed(4);
  const FourBitTensor q = to_device(quantize_4bit(at::randn({64, 96}), FourBit::NF4, 64, true), device());
  at::Tensor buffer = at::empty({2 * 64 * 96}, at::TensorOptions().dtype(at::kBFloat16).device(device()));
  at::Tensor out = buffer.narrow(0, 0, 64 * 96);
  dequantize_4bit_out(q, out);
  EXPECT_TRUE(at::equal(out.view({64, 96}), dequantize_4bit_reference(q, at::kBFloat16)));
  // bnb_4bit_quant_storage other than uint8: the same bytes seen as another dtype.
  FourBitTensor as_bf16 = q;
  as_bf16.packed = q.packed.view({-1}).view(at::kBFloat16).unsqueeze(1);
  EXPECT_TRUE(at::equal(dequantize_4bit(as_bf16, at::kFloat), dequantize_4bit_reference(q, at::kFloat)));
}

// Off the CPU, quantize runs the ATen path itself: the loop is CPU-only.
TEST(BnbCpuLoop, QuantizeEqualsTheReference) {
  at::manual_seed(9);
  for (FourBit type : {FourBit::NF4, FourBit::FP4}) {
    for (int64_t blocksize : {32, 64, 256, 4096}) {
      for (int64_t n : {int64_t{13}, int64_t{64 * 7 + 5}, int64_t{300 * 64}, int64_t{4096 * 3 + 1}}) {
        for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
          const at::Tensor w = (n < 4000 ? hard_values(type, n) : at::randn({n}) * 0.02).to(dtype);
          for (bool nested : {false, true}) {
            const FourBitTensor got = quantize_4bit(w, type, blocksize, nested);
            const FourBitTensor want = quantize_4bit_reference(w, type, blocksize, nested);
            const std::string what = describe(type, blocksize, nested, {n}, dtype);
            ASSERT_TRUE(at::equal(got.packed, want.packed)) << what;
            ASSERT_TRUE(at::equal(got.state.absmax, want.state.absmax)) << what;
            if (nested) {
              ASSERT_TRUE(at::equal(got.state.nested_absmax, want.state.nested_absmax)) << what;
              ASSERT_EQ(got.state.nested_offset, want.state.nested_offset) << what;
            }
          }
        }
      }
    }
  }
}

TEST(BnbCudaKernels, GemvEqualsDequantizeThenMatmul) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device on this machine: the 4-bit gemv test did not run";
  if (!ops::kernels_built()) GTEST_SKIP() << "llmtune built without its CUDA kernels";
  const c10::Device cuda(c10::kCUDA);
  at::manual_seed(13);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{96, 128}, {33, 200}, {17, 13}, {5, 4097}, {4096, 4096},
                                                           {1024, 11008}};
  for (FourBit type : {FourBit::NF4, FourBit::FP4}) {
    for (bool nested : {false, true}) {
      for (auto [out, in] : shapes) {
        const at::Tensor w = at::randn({out, in}) * 0.05;
        const FourBitTensor q = to_device(quantize_4bit(w, type, 64, nested), cuda);
        for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
          const at::Tensor x = at::randn({in}, at::TensorOptions().device(cuda)).to(dtype);
          ASSERT_TRUE(ops::four_bit_gemv_available(x));
          const at::Tensor got = ops::four_bit_gemv(four_bit_blocks(q), x, out);
          const at::Tensor want = at::linear(x.unsqueeze(0), dequantize_4bit_reference(q, dtype)).squeeze(0);
          ASSERT_EQ(got.scalar_type(), dtype);
          // Both round each weight to dtype and sum in float32, in different orders; then one
          // rounding of the result to dtype.
          const double scale = want.to(at::kFloat).abs().max().item<double>();
          const double tol = dtype == at::kFloat ? 1e-5 : (dtype == at::kHalf ? 2e-3 : 1.6e-2);
          EXPECT_LE(testing::max_abs_diff(got.to(at::kFloat), want.to(at::kFloat)), tol * scale)
              << describe(type, 64, nested, {out, in}, dtype);
        }
      }
    }
  }
  // x off a 16-byte boundary takes the one-element-at-a-time path.
  const FourBitTensor q = to_device(quantize_4bit(at::randn({64, 256}), FourBit::NF4, 64, false), cuda);
  const at::Tensor buffer = at::randn({257}, at::TensorOptions().device(cuda));
  const at::Tensor x = buffer.narrow(0, 1, 256);
  const at::Tensor want = at::linear(x.unsqueeze(0), dequantize_4bit_reference(q, at::kFloat)).squeeze(0);
  EXPECT_LE(testing::max_abs_diff(ops::four_bit_gemv(four_bit_blocks(q), x, 64), want), 1e-5 * want.abs().max().item<double>());
}

TEST_P(BnbKernels, FourBitLinearForwardAndBackwardMatchTheReference) {
  at::manual_seed(17);
  const auto opts = at::TensorOptions().device(device());
  // Two layers of different shapes share the CPU's dequantize buffer: the gradients through both
  // must still be each one's own.
  const at::Tensor wa = at::randn({96, 128}) * 0.05, wb = at::randn({40, 96}) * 0.05, bias = at::randn({40}) * 0.1;
  FourBitLinear a(to_device(quantize_4bit(wa, FourBit::NF4, 64, true), device()));
  FourBitLinear b(to_device(quantize_4bit(wb, FourBit::FP4, 64, false), device()), bias.to(device()));
  const at::Tensor ref_wa = dequantize_4bit_reference(a.quantized(), at::kFloat);
  const at::Tensor ref_wb = dequantize_4bit_reference(b.quantized(), at::kFloat);
  for (int64_t rows : {1, 6}) {
    const at::Tensor x0 = at::randn({rows, 128}, opts);
    const at::Tensor x = x0.clone().requires_grad_(true);
    const at::Tensor y = b.forward(a.forward(x));
    (y * y).sum().backward();
    const at::Tensor xr = x0.clone().requires_grad_(true);
    const at::Tensor yr = at::linear(at::linear(xr, ref_wa), ref_wb, bias.to(device()));
    (yr * yr).sum().backward();
    EXPECT_LE(testing::max_abs_diff(y, yr), 1e-5 * yr.abs().max().item<double>()) << "rows " << rows;
    EXPECT_LE(testing::max_abs_diff(x.grad(), xr.grad()), 1e-5 * xr.grad().abs().max().item<double>()) << "rows " << rows;
  }
  // Decoding: one token, no gradient (the CUDA gemv where it exists), in every dtype.
  at::NoGradGuard no_grad;
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor x = at::randn({1, 1, 128}, opts).to(dtype);
    const at::Tensor got = a.forward(x);
    const at::Tensor want = at::linear(x, ref_wa.to(dtype));
    ASSERT_EQ(got.sizes(), want.sizes());
    const double tol = dtype == at::kFloat ? 1e-5 : (dtype == at::kHalf ? 2e-3 : 1.6e-2);
    EXPECT_LE(testing::max_abs_diff(got.to(at::kFloat), want.to(at::kFloat)), tol * want.to(at::kFloat).abs().max().item<double>())
        << c10::toString(dtype);
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, BnbKernels, ::testing::Values(c10::kCPU, c10::kCUDA),
                         [](const auto& info) { return std::string(c10::DeviceTypeName(info.param, true)); });

}  // namespace
}  // namespace llmtune::quant
