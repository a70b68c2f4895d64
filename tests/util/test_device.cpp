// Device resolution on this machine (the dtype choice is tested with ops/runtime in tests/ops).
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

}  // namespace
}  // namespace llmtune
