// Device and dtype selection: what `--device auto` resolves to and why, and the dtype names
// (`--dtype auto` is resolved by ops/runtime.h, which knows the GPUs).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <string_view>
#include <vector>

namespace llmtune {

struct DeviceChoice {
  c10::Device device{c10::kCPU};
  std::string reason;
};

struct DtypeChoice {
  c10::ScalarType dtype = c10::kFloat;
  std::string reason;
};

// request: auto | cpu | cuda | cuda:N | mps. auto picks CUDA, then MPS, then CPU. Asking for a
// device this machine lacks is a DeviceError naming what is there instead.
DeviceChoice choose_device(std::string_view request);

// choose_dtype, whose `auto` needs the GPU's compute capability, is in ops/runtime.h.

// The dtype names users write: "fp32", "bf16", "fp16".
std::string dtype_name(c10::ScalarType dtype);

// Valid values for the shared `device` and `dtype` config keys, for the schema.
bool is_valid_device_request(std::string_view request);
const std::vector<std::string>& dtype_choices();

}  // namespace llmtune
