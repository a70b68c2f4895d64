// The runtime-info seam: --dtype auto and its aliases, what the kernels report through ops/, peak
// memory, memory limits and estimates, and libtorch's failed checks staying exceptions.
#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <gtest/gtest.h>

#include "cuda_runtime_info.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/util/error.h"

namespace llmtune {
namespace {

TEST(Device, DtypeDefaultsAndAliases) {
  EXPECT_EQ(choose_dtype("auto", c10::Device(c10::kCPU)).dtype, c10::kFloat);
  EXPECT_EQ(choose_dtype("bf16", c10::Device(c10::kCPU)).dtype, c10::kBFloat16);
  EXPECT_EQ(choose_dtype("bfloat16", c10::Device(c10::kCPU)).dtype, c10::kBFloat16);
  EXPECT_EQ(choose_dtype("float16", c10::Device(c10::kCPU)).dtype, c10::kHalf);
  EXPECT_EQ(choose_dtype("fp32", c10::Device(c10::kCUDA, 0)).dtype, c10::kFloat);
  EXPECT_THROW(choose_dtype("int8", c10::Device(c10::kCPU)), ConfigError);
  EXPECT_EQ(dtype_name(c10::kBFloat16), "bf16");
}

TEST(Runtime, ReportsWhatTheKernelsReport) {
  EXPECT_EQ(ops::kernels_built(), kernels::cuda_kernels_compiled());
  const auto devices = ops::cuda_devices();
  EXPECT_EQ(devices.size(), kernels::cuda_devices(false).size());
  for (const auto& d : devices) EXPECT_EQ(d.free_memory_bytes, -1) << "free memory is read only when asked";
  if (!at::hasCUDA()) EXPECT_TRUE(devices.empty());
  for (size_t i = 0; i < devices.size(); ++i) EXPECT_EQ(devices[i].index, static_cast<int>(i));
}

TEST(Runtime, AutoDtypeOnCudaFollowsTheComputeCapability) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const DtypeChoice c = choose_dtype("auto", c10::Device(c10::kCUDA, 0));
  const auto devices = ops::cuda_devices();
  const bool old_gpu = !devices.empty() && devices[0].compute_major > 0 && devices[0].compute_major < 8;
  EXPECT_EQ(c.dtype, old_gpu ? c10::kHalf : c10::kBFloat16) << c.reason;
}

TEST(Runtime, PeakMemory) {
  EXPECT_GT(ops::peak_rss_bytes(), 0);
  EXPECT_EQ(ops::peak_memory_bytes(c10::Device(c10::kCPU)), ops::peak_rss_bytes());
  // On CUDA the caching allocator's peak, with or without llmtune's kernels: at least what a live
  // tensor holds.
  if (at::hasCUDA()) {
    at::Tensor t = at::empty({1 << 20}, at::TensorOptions().dtype(at::kFloat).device(c10::kCUDA));
    EXPECT_GE(ops::peak_memory_bytes(c10::Device(c10::kCUDA, 0)), int64_t{4} << 20);
  }
}

TEST(Runtime, AnAllocationThatCannotSucceedThrowsInsteadOfAborting) {
  // 64 TiB: malloc refuses it outright. With libc10's enforce flag clobbered by Debian's
  // libsentencepiece (see restore_libtorch_error_handling) this logged FATAL and aborted.
  EXPECT_THROW(at::empty({int64_t{1} << 46}, at::kByte), c10::Error);
}

TEST(Runtime, TheCpuMemoryLimitIsTheMachines) {
  const int64_t limit = ops::memory_limit_bytes(c10::Device(c10::kCPU));
  EXPECT_GT(limit, int64_t{256} << 20);
  EXPECT_LT(limit, int64_t{1} << 50);
}

TEST(Runtime, EstimatesBeyondTheLimitAreConfigErrorsWithTheEstimate) {
  const c10::Device cpu(c10::kCPU);
  EXPECT_NO_THROW(ops::check_fits(1e6, cpu, "a small job", "nothing to do"));
  try {
    ops::check_fits(1e18, cpu, "a model of config.json", "lower hidden_size");
    FAIL() << "1e18 bytes fit";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("a model of config.json needs about 888.2 PiB"), std::string::npos) << what;
    EXPECT_NE(what.find("lower hidden_size"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace llmtune
