// The runtime-info seam over kernels/cuda_runtime_info.h (or kernels/absent.cpp), plus peak RSS
// from getrusage and the dtype choice that needs a GPU's compute capability.
#include "llmtune/ops/runtime.h"

#include <ATen/DeviceAccelerator.h>
#include <c10/util/Logging.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <limits>

#include "../../kernels/cuda_runtime_info.h"
#include "llmtune/util/error.h"

// Defined in libc10 (glog's name; not declared in its headers).
C10_API extern int FLAGS_minloglevel;

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

void restore_libtorch_error_handling() {
  FLAGS_caffe2_use_fatal_for_enforce = false;  // libc10's defaults
  FLAGS_minloglevel = 0;
}

namespace {
// Static initialisers of the program run after those of the shared libraries it links.
[[maybe_unused]] const bool libtorch_errors_restored = (restore_libtorch_error_handling(), true);
}  // namespace

bool kernels_built() { return kernels::cuda_kernels_compiled(); }

namespace {

// "MemTotal:       24567 kB" lines of /proc/meminfo, in bytes; 0 when absent.
int64_t meminfo_bytes(const std::string& key) {
  std::ifstream in("/proc/meminfo");
  std::string name, unit;
  int64_t kb = 0;
  while (in >> name >> kb >> unit)
    if (name == key + ":") return kb * 1024;
  return 0;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (bytes >= 1024 && u < 6) bytes /= 1024, ++u;
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

}  // namespace

int64_t memory_limit_bytes(const c10::Device& device) {
  if (device.is_cuda()) {
    for (const auto& d : cuda_devices())
      if (d.index == std::max<int>(device.index(), 0) && d.total_memory_bytes > 0) return d.total_memory_bytes;
    return -1;
  }
  int64_t limit = meminfo_bytes("MemTotal") + meminfo_bytes("SwapTotal");
  if (limit <= 0) {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    limit = pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : std::numeric_limits<int64_t>::max();
  }
  struct rlimit as {};
  if (::getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY)
    limit = std::min<int64_t>(limit, static_cast<int64_t>(as.rlim_cur));
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");
  if (std::string v; cgroup >> v && v != "max") {
    try {
      limit = std::min<int64_t>(limit, std::stoll(v));
    } catch (const std::exception&) {
    }
  }
  return limit;
}

void check_fits(double estimate_bytes, const c10::Device& device, const std::string& what, const std::string& hint) {
  const int64_t limit = memory_limit_bytes(device);
  if (limit <= 0 || estimate_bytes <= static_cast<double>(limit)) return;
  throw ConfigError(what + " needs about " + format_bytes(estimate_bytes) + ", more than the " + format_bytes(static_cast<double>(limit)) +
                    " " + (device.is_cuda() ? device.str() : std::string("this machine")) + " has; " + hint);
}

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
