// The runtime-info seam over kernels/cuda_runtime_info.h (or kernels/absent.cpp), plus peak RSS
// from getrusage and the dtype choice that needs a GPU's compute capability.
#include "llmtune/ops/runtime.h"

#include <ATen/DeviceAccelerator.h>
#include <sys/resource.h>

#include "../../kernels/cuda_runtime_info.h"
#include "llmtune/util/error.h"

namespace llmtune {

DtypeChoice choose_dtype(std::string_view request, const c10::Device& device) {
  if (request == "fp32" || request == "float32") return {c10::kFloat, "requested"};
  if (request == "bf16" || request == "bfloat16") return {c10::kBFloat16, "requested"};
  if (request == "fp16" || request == "float16") return {c10::kHalf, "requested"};
  if (request != "auto") throw ConfigError("unknown dtype '" + std::string(request) + "' (use auto, fp32, bf16 or fp16)");
  if (device.is_cuda()) {
    for (const auto& d : ops::cuda_devices()) {
      if (d.index == device.index() && d.compute_major > 0 && d.compute_major < 8)
        return {c10::kHalf, "auto: " + d.name + " (sm_" + std::to_string(d.compute_major) + std::to_string(d.compute_minor) + ") lacks bf16; using fp16"};
    }
    return {c10::kBFloat16, "auto: bf16 on CUDA"};
  }
  if (device.is_mps()) return {c10::kFloat, "auto: fp32 on MPS"};
  return {c10::kFloat, "auto: fp32 on CPU (bf16 on request)"};
}

}  // namespace llmtune

namespace llmtune::ops {

bool kernels_built() { return kernels::cuda_kernels_compiled(); }

std::vector<CudaDevice> cuda_devices(bool with_free_memory) {
  std::vector<CudaDevice> out;
  for (const auto& d : kernels::cuda_devices(with_free_memory))
    out.push_back({d.index, d.name, d.compute_major, d.compute_minor, d.total_memory_bytes, d.free_memory_bytes});
  return out;
}

int64_t peak_rss_bytes() {
  struct rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

int64_t peak_memory_bytes(const c10::Device& device) {
  if (device.is_cuda()) {
    const auto stats = at::accelerator::getDeviceStats(device.has_index() ? device.index() : 0);
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
  return peak_rss_bytes();
}

}  // namespace llmtune::ops
