// What the runtime offers and has used: whether llmtune's own CUDA kernels are built in, the CUDA
// devices with their compute capability, peak memory, and the `--dtype auto` choice that depends on
// them. The one seam to kernels/ for everything above ops/ (which dispatches to the kernels).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "llmtune/util/device.h"

namespace llmtune {

// request: auto | fp32 | bf16 | fp16 (and float32, bfloat16, float16). auto is bf16 on CUDA
// (fp16 where the GPU lacks bf16), fp32 on CPU and MPS. Unknown names are a ConfigError.
DtypeChoice choose_dtype(std::string_view request, const c10::Device& device);

}  // namespace llmtune

namespace llmtune::ops {

struct CudaDevice {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;  // 0 when unknown (built without the CUDA kernels)
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = -1;  // -1 when unknown
};

// True when llmtune's own CUDA kernels are linked into this binary.
bool kernels_built();

// One entry per visible CUDA device; empty when there is none (or no driver). Free memory (-1
// unless asked for) creates a CUDA context on every device to read: only `env` asks.
std::vector<CudaDevice> cuda_devices(bool with_free_memory = false);

// Peak memory of a job on `device`, in bytes: on CUDA, the peak allocated through libtorch's caching
// allocator on that device (read through ATen's accelerator API, with or without our kernels);
// elsewhere the process's peak resident memory (peak_rss_bytes).
int64_t peak_memory_bytes(const c10::Device& device);
int64_t peak_rss_bytes();

}  // namespace llmtune::ops
