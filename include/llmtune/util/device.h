// Device and dtype selection: what `--device auto` and `--dtype auto` resolve to, and why.
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

// request: auto | fp32 | bf16 | fp16 (and float32, bfloat16, float16). auto is bf16 on CUDA
// (fp16 where the GPU lacks bf16), fp32 on CPU and MPS.
DtypeChoice choose_dtype(std::string_view request, const c10::Device& device);

// The dtype names users write: "fp32", "bf16", "fp16".
std::string dtype_name(c10::ScalarType dtype);

// Valid values for the shared `device` and `dtype` config keys, for the schema.
bool is_valid_device_request(std::string_view request);
const std::vector<std::string>& dtype_choices();

}  // namespace llmtune
