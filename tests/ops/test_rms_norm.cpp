// RMSNorm: the ATen reference against a float64 formula, the op against transformers'
// LlamaRMSNorm / GemmaRMSNorm, and the CUDA kernel against the reference (skipped without a GPU).
#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "llmtune/ops/rms_norm.h"
#include "llmtune/ops/runtime.h"
#include "support/interop.h"

namespace llmtune {
namespace {

// y[r, i] = w'[i] * x[r, i] / sqrt(mean_i(x[r, i]^2) + eps), with w' = 1 + w for Gemma; float64.
at::Tensor formula_f64(const at::Tensor& x, const at::Tensor& w, double eps, bool unit_offset) {
  at::Tensor xd = x.to(at::kDouble).contiguous().reshape({-1, x.size(-1)});
  at::Tensor wd = w.to(at::kDouble).contiguous();
  at::Tensor y = at::empty(xd.sizes(), xd.options());
  const double* xp = xd.const_data_ptr<double>();
  const double* wp = wd.const_data_ptr<double>();
  double* yp = y.mutable_data_ptr<double>();
  const int64_t rows = xd.size(0), h = xd.size(1);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < h; ++i) ss += xp[r * h + i] * xp[r * h + i];
    double inv = 1.0 / std::sqrt(ss / static_cast<double>(h) + eps);
    for (int64_t i = 0; i < h; ++i) yp[r * h + i] = (unit_offset ? 1.0 + wp[i] : wp[i]) * xp[r * h + i] * inv;
  }
  return y.reshape(x.sizes());
}

// Relative tolerance per dtype: fp32 rounding; one or two roundings of the output for 16-bit.
double tolerance(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return 1e-5;
    case at::kHalf: return 2e-3;
    default: return 1.6e-2;  // bf16: 8 mantissa bits, rounded twice on the Llama path
  }
}

const std::vector<std::vector<int64_t>> kShapes{{1, 8}, {3, 5, 64}, {2, 7, 1000}, {4, 4096}, {2, 3, 4095}};

class RmsNormReference : public ::testing::TestWithParam<std::tuple<at::ScalarType, bool>> {};

TEST_P(RmsNormReference, MatchesFloat64Formula) {
  auto [dtype, unit_offset] = GetParam();
  at::manual_seed(1);
  for (const auto& shape : kShapes) {
    at::Tensor x = (at::randn(shape) * 3.0).to(dtype);
    at::Tensor w = (at::randn({shape.back()}) * 0.5 + 1.0).to(dtype);
    at::Tensor got = ops::rms_norm(x, w, 1e-6, unit_offset);
    ASSERT_EQ(got.scalar_type(), dtype);
    ASSERT_EQ(got.sizes(), x.sizes());
    at::Tensor want = formula_f64(x, w, 1e-6, unit_offset);
    double scale = want.abs().max().item<double>();
    EXPECT_LE(testing::max_abs_diff(got, want), tolerance(dtype) * scale) << "shape " << at::IntArrayRef(shape);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RmsNormReference,
                         ::testing::Combine(::testing::Values(at::kFloat, at::kHalf, at::kBFloat16), ::testing::Bool()));

TEST(RmsNormInterop, EqualsTransformersOnCpu) {
  at::manual_seed(2);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (bool gemma : {false, true}) {
      at::Tensor x = (at::randn({2, 9, 320}) * 2.0).to(dtype);
      at::Tensor w = (at::randn({320}) * 0.1 + 1.0).to(dtype);
      double eps = gemma ? 1e-6 : 1e-5;
      auto ref = testing::call_python(gemma ? "rms_norm_gemma" : "rms_norm_llama", {x, w}, {{"eps", eps}});
      at::Tensor got = ops::rms_norm(x, w, eps, gemma);
      ASSERT_EQ(ref[0].scalar_type(), got.scalar_type());
      // The same ATen operations in the same order on the same libtorch: identical bits.
      EXPECT_EQ(testing::max_abs_diff(got, ref[0]), 0.0) << c10::toString(dtype) << (gemma ? " gemma" : " llama");
    }
  }
}

TEST(RmsNorm, RejectsMismatchedWeight) {
  at::Tensor x = at::randn({2, 16});
  EXPECT_THROW(ops::rms_norm(x, at::randn({15}), 1e-6), c10::Error);
  EXPECT_THROW(ops::rms_norm(x, at::randn({4, 4}), 1e-6), c10::Error);
  EXPECT_THROW(ops::rms_norm(x, at::randn({16}), -1.0), c10::Error);
}

class RmsNormCuda : public ::testing::TestWithParam<std::tuple<at::ScalarType, bool>> {
 protected:
  void SetUp() override {
    if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device on this machine: the CUDA kernel test did not run";
    if (!ops::kernels_built()) GTEST_SKIP() << "llmtune built without its CUDA kernels";
  }
};

TEST_P(RmsNormCuda, KernelMatchesReference) {
  auto [dtype, unit_offset] = GetParam();
  at::manual_seed(3);
  auto cuda = at::TensorOptions().device(at::kCUDA);
  std::vector<std::vector<int64_t>> shapes = kShapes;
  shapes.push_back({1024, 8192});
  shapes.push_back({7, 1});
  for (const auto& shape : shapes) {
    at::Tensor x = (at::randn(shape, cuda) * 3.0).to(dtype);
    at::Tensor w = (at::randn({shape.back()}, cuda) * 0.5 + 1.0).to(dtype);
    at::Tensor got = ops::rms_norm(x, w, 1e-6, unit_offset);
    at::Tensor want = ops::rms_norm_reference(x, w, 1e-6, unit_offset);
    ASSERT_TRUE(at::isfinite(got).all().item<bool>());
    double scale = want.abs().max().item<double>();
    // The kernel and the reference differ only in fp32 summation order, then share the rounding.
    double tol = dtype == at::kFloat ? 1e-5 : (dtype == at::kHalf ? 1e-3 : 8e-3);
    EXPECT_LE(testing::max_abs_diff(got, want), tol * scale) << "shape " << at::IntArrayRef(shape);
  }
  // A contiguous input that starts off a 16-byte boundary takes the scalar path.
  at::Tensor buffer = at::randn({1 + 4 * 256}, cuda).to(dtype);
  at::Tensor x = buffer.narrow(0, 1, 4 * 256).view({4, 256});
  at::Tensor w = at::randn({256}, cuda).to(dtype);
  EXPECT_LE(testing::max_abs_diff(ops::rms_norm(x, w, 1e-5, unit_offset), ops::rms_norm_reference(x, w, 1e-5, unit_offset)),
            1e-2 * ops::rms_norm_reference(x, w, 1e-5, unit_offset).abs().max().item<double>());
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RmsNormCuda,
                         ::testing::Combine(::testing::Values(at::kFloat, at::kHalf, at::kBFloat16), ::testing::Bool()));

}  // namespace
}  // namespace llmtune
