// Device and dtype resolution on this machine.
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "llmtune/util/device.h"
#include "llmtune/util/error.h"

namespace llmtune {
namespace {

TEST(Device, AutoPrefersCudaThenMpsThenCpu) {
  DeviceChoice c = choose_device("auto");
  if (at::hasCUDA()) EXPECT_TRUE(c.device.is_cuda());
  else if (at::hasMPS()) EXPECT_TRUE(c.device.is_mps());
  else EXPECT_TRUE(c.device.is_cpu());
  EXPECT_NE(c.reason.find("auto"), std::string::npos);
}

TEST(Device, ExplicitRequests) {
  EXPECT_TRUE(choose_device("cpu").device.is_cpu());
  if (!at::hasCUDA()) {
    EXPECT_THROW(choose_device("cuda"), DeviceError);
    EXPECT_THROW(choose_device("cuda:1"), DeviceError);
  }
  if (!at::hasMPS()) {
    EXPECT_THROW(choose_device("mps"), DeviceError);
  }
  EXPECT_THROW(choose_device("gpu"), ConfigError);
  EXPECT_FALSE(is_valid_device_request("cuda:"));
  EXPECT_FALSE(is_valid_device_request("cuda:x"));
  EXPECT_TRUE(is_valid_device_request("cuda:3"));
}

TEST(Device, DtypeDefaultsAndAliases) {
  EXPECT_EQ(choose_dtype("auto", c10::Device(c10::kCPU)).dtype, c10::kFloat);
  EXPECT_EQ(choose_dtype("bf16", c10::Device(c10::kCPU)).dtype, c10::kBFloat16);
  EXPECT_EQ(choose_dtype("bfloat16", c10::Device(c10::kCPU)).dtype, c10::kBFloat16);
  EXPECT_EQ(choose_dtype("float16", c10::Device(c10::kCPU)).dtype, c10::kHalf);
  EXPECT_EQ(choose_dtype("fp32", c10::Device(c10::kCUDA, 0)).dtype, c10::kFloat);
  EXPECT_THROW(choose_dtype("int8", c10::Device(c10::kCPU)), ConfigError);
  EXPECT_EQ(dtype_name(c10::kBFloat16), "bf16");
}

}  // namespace
}  // namespace llmtune
