// Compiled instead of the .cu files when llmtune is built without its CUDA kernels
// (LLMTUNE_CUDA=OFF or no CUDA toolkit): the same entry points, reporting their absence.
#include <ATen/Context.h>

#include "cuda_runtime_info.h"
#include "launchers.h"
#include "llmtune/util/error.h"

namespace llmtune::kernels {

bool cuda_kernels_compiled() { return false; }

std::vector<CudaDeviceInfo> cuda_devices(bool) {
  // Without the CUDA runtime headers only the count is known; libtorch still drives the devices.
  std::vector<CudaDeviceInfo> out;
  if (!at::hasCUDA()) return out;
  int n = at::detail::getCUDAHooks().getNumGPUs();
  for (int i = 0; i < n; ++i) out.push_back({.index = i, .name = "unknown (llmtune built without CUDA kernels)"});
  return out;
}

at::Tensor rms_norm_forward_cuda(const at::Tensor&, const at::Tensor&, double, bool) {
  throw DeviceError("rms_norm: llmtune was built without its CUDA kernels; rebuild with -DLLMTUNE_CUDA=ON");
}

void four_bit_dequantize_cuda(const FourBitArgs&, at::Tensor&) {
  throw DeviceError("4-bit dequantize: llmtune was built without its CUDA kernels; rebuild with -DLLMTUNE_CUDA=ON");
}

at::Tensor four_bit_gemv_cuda(const FourBitArgs&, const at::Tensor&, int64_t) {
  throw DeviceError("4-bit gemv: llmtune was built without its CUDA kernels; rebuild with -DLLMTUNE_CUDA=ON");
}

}  // namespace llmtune::kernels
