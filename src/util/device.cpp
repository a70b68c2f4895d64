// Resolves --device requests against what this machine offers, with the reason; dtype names.
#include "llmtune/util/device.h"

#include <ATen/Context.h>

#include <charconv>

#include "llmtune/util/error.h"

namespace llmtune {
namespace {

int cuda_device_count() { return at::hasCUDA() ? at::detail::getCUDAHooks().getNumGPUs() : 0; }

std::string what_is_here() {
  std::string s = "this machine has: cpu";
  if (int n = cuda_device_count(); n > 0) s += ", cuda (" + std::to_string(n) + " device" + (n > 1 ? "s" : "") + ")";
  if (at::hasMPS()) s += ", mps";
  return s;
}

}  // namespace

bool is_valid_device_request(std::string_view r) {
  if (r == "auto" || r == "cpu" || r == "cuda" || r == "mps") return true;
  if (!r.starts_with("cuda:") || r.size() == 5) return false;
  int index = 0;
  auto [ptr, ec] = std::from_chars(r.data() + 5, r.data() + r.size(), index);
  return ec == std::errc() && ptr == r.data() + r.size() && index >= 0;
}

DeviceChoice choose_device(std::string_view request) {
  if (!is_valid_device_request(request)) {
    throw ConfigError("unknown device '" + std::string(request) + "' (use auto, cpu, cuda, cuda:N or mps)");
  }
  int n_cuda = cuda_device_count();
  if (request == "auto") {
    if (n_cuda > 0) return {c10::Device(c10::kCUDA, 0), "auto: CUDA is available (" + std::to_string(n_cuda) + " device(s)); using cuda:0"};
    if (at::hasMPS()) return {c10::Device(c10::kMPS), "auto: no CUDA device; Apple MPS is available"};
    return {c10::Device(c10::kCPU), "auto: no CUDA device and no MPS; using the CPU"};
  }
  if (request == "cpu") return {c10::Device(c10::kCPU), "requested"};
  if (request == "mps") {
    if (!at::hasMPS()) throw DeviceError("--device mps requested but MPS is not available; " + what_is_here() + " (use --device auto)");
    return {c10::Device(c10::kMPS), "requested"};
  }
  int index = 0;
  if (request.size() > 5) std::from_chars(request.data() + 5, request.data() + request.size(), index);
  if (n_cuda == 0) throw DeviceError("--device " + std::string(request) + " requested but CUDA is not available; " + what_is_here() + " (use --device auto or cpu)");
  if (index >= n_cuda) throw DeviceError("--device " + std::string(request) + ": there are only " + std::to_string(n_cuda) + " CUDA device(s)");
  return {c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index)), "requested"};
}

const std::vector<std::string>& dtype_choices() {
  static const std::vector<std::string> choices{"auto", "fp32", "bf16", "fp16", "float32", "bfloat16", "float16"};
  return choices;
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "fp32";
    case c10::kBFloat16: return "bf16";
    case c10::kHalf: return "fp16";
    case c10::kDouble: return "fp64";
    default: return c10::toString(dtype);
  }
}

}  // namespace llmtune
