// Device properties straight from the CUDA runtime (names, memory, compute capability).
#include <cuda_runtime_api.h>

#include "cuda_runtime_info.h"

namespace llmtune::kernels {

bool cuda_kernels_compiled() { return true; }

std::vector<CudaDeviceInfo> cuda_devices(bool with_free_memory) {
  std::vector<CudaDeviceInfo> out;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky error and report none
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    CudaDeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    info.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    if (with_free_memory) {
      int previous = 0;
      size_t free_bytes = 0, total_bytes = 0;
      if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(i) == cudaSuccess &&
          cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
        info.free_memory_bytes = static_cast<int64_t>(free_bytes);
      }
      cudaSetDevice(previous);
    }
    cudaGetLastError();
    out.push_back(info);
  }
  return out;
}

}  // namespace llmtune::kernels
