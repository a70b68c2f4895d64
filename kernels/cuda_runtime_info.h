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

// One entry per visible CUDA device; empty when there is none (or no driver).
std::vector<CudaDeviceInfo> cuda_devices();

// Peak bytes allocated through libtorch's CUDA caching allocator on a device since start; -1 when
// unknown (no CUDA kernels compiled).
int64_t cuda_peak_allocated_bytes(int device_index);

}  // namespace llmtune::kernels
