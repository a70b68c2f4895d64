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

// Makes libtorch's failed checks (an allocation that does not fit, a bad shape) throw c10::Error
// again, as they do by default. Debian's libsentencepiece defines its own FLAGS_minloglevel (a
// 32-byte flag object) and, the name resolving to libc10's 4-byte int of that name, its static
// constructor overwrites the libc10 flags that follow, among them caffe2_use_fatal_for_enforce:
// every failed TORCH/CAFFE enforce then logs FATAL and aborts the process. Runs once at start-up
// (a static initialiser in runtime.cpp, after every shared library's); callable again at no cost.
void restore_libtorch_error_handling();

// The most memory a job on `device` can have, in bytes: a CUDA device's total memory; on the CPU
// (and MPS, which shares it) physical memory plus swap, lowered to the address-space limit
// (RLIMIT_AS) and the cgroup's memory.max when those are set. Estimates above it are refused
// before anything is allocated (check_fits). -1 when unknown.
int64_t memory_limit_bytes(const c10::Device& device);

// Throws ConfigError "<what> needs about X, more than the Y <device> has; <hint>" when
// `estimate_bytes` exceeds memory_limit_bytes(device). Does nothing when the limit is unknown.
void check_fits(double estimate_bytes, const c10::Device& device, const std::string& what, const std::string& hint);

// Peak memory of a job on `device`, in bytes: on CUDA, the peak allocated through libtorch's caching
// allocator on that device (read through ATen's accelerator API, with or without our kernels);
// elsewhere the process's peak resident memory (peak_rss_bytes).
int64_t peak_memory_bytes(const c10::Device& device);
int64_t peak_rss_bytes();

}  // namespace llmtune::ops
