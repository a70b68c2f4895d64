// What the CUDA runtime says about this machine. Implemented in kernels/cuda_runtime_info.cu when
// the CUDA kernels are compiled, and by kernels/absent.cpp otherwise. No CUDA types here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmtune::kernels {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  int multiprocessors = 0;
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = -1;  // -1 when unknown
};

// True when llmtune's own CUDA kernels are linked into this binary.
bool cuda_kernels_compiled();

// One entry per visible CUDA device; empty when there is none (or no driver). Free memory is read
// only when asked (`env`): reading it creates a CUDA context on every device.
std::vector<CudaDeviceInfo> cuda_devices(bool with_free_memory);

}  // namespace llmtune::kernels
