// Collects and formats the `llmtune env` report.
#include "llmtune/pipelines/env.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <fmt/format.h>
#include <sys/types.h>
#include <torch/headeronly/version.h>

#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "llmtune/build_info.h"
#include "llmtune/ops/four_bit.h"
#include "llmtune/ops/runtime.h"
#include "llmtune/util/device.h"

namespace llmtune::pipelines {
namespace {

std::optional<std::string> libtorch_cuda_version() {
  if (!at::hasCUDA() && !at::detail::getCUDAHooks().hasCUDART()) return std::nullopt;
  try {
    long v = at::detail::getCUDAHooks().versionCUDART();  // e.g. 13020
    return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  } catch (const std::exception&) {
    return std::nullopt;  // libtorch without its CUDA library
  }
}

// 4-bit CUDA kernels (NF4/FP4 dequantize, the 4-bit gemv for decoding), as ops dispatches to them.
std::pair<bool, std::string> four_bit_cuda_kernels() {
  if (ops::four_bit_dequantize_fast(c10::Device(c10::kCUDA, 0)))
    return {true, "compiled in: NF4/FP4 dequantize and the batch-1 4-bit gemv run as CUDA kernels"};
  return {false, "not compiled in (no CUDA kernels in this build); 4-bit layers run through the ATen path on every device"};
}

// The process's malloc: jemalloc when the binary was linked with it (it then exports mallctl),
// with the settings src/cli/allocator.cpp gives it; else the C library's.
std::string allocator_in_use() {
  using Mallctl = int (*)(const char*, void*, size_t*, void*, size_t);
  auto mallctl = reinterpret_cast<Mallctl>(::dlsym(RTLD_DEFAULT, "mallctl"));
  if (!mallctl) return "system malloc";
  const char* version = nullptr;
  size_t size = sizeof version;
  ssize_t decay = 0;
  size_t decay_size = sizeof decay;
  std::string out = "jemalloc";
  if (mallctl("version", &version, &size, nullptr, 0) == 0 && version) out += std::string(" ") + version;
  if (mallctl("opt.dirty_decay_ms", &decay, &decay_size, nullptr, 0) == 0)
    out += decay < 0 ? " (freed pages kept)" : fmt::format(" (freed pages returned after {} ms)", decay);
  return out;
}

std::string gib(int64_t bytes) { return fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (1 << 30)); }

}  // namespace

EnvReport collect_env(const EnvParams& params) {
  EnvReport r;
  r.llmtune_version = build_info::version;
  r.git_rev = build_info::git_rev;
  r.libtorch_version = fmt::format("{}.{}.{}", TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH);
  r.libtorch_cuda_version = libtorch_cuda_version();
  r.cuda_kernels_compiled = ops::kernels_built();
  r.cuda_kernel_archs = r.cuda_kernels_compiled ? build_info::cuda_archs : "";
  r.cuda_available = at::hasCUDA();
  if (r.cuda_available) {
    for (const auto& d : ops::cuda_devices(/*with_free_memory=*/true)) {
      std::string cc = d.compute_major > 0 ? fmt::format("{}.{}", d.compute_major, d.compute_minor) : "";
      r.cuda_devices.push_back({d.index, d.name, cc, d.total_memory_bytes, d.free_memory_bytes});
    }
  }
  r.mps_available = at::hasMPS();
  r.quant_formats = {"nf4", "fp4", "int8"};
  std::tie(r.four_bit_cuda_kernels, r.four_bit_cuda_reason) = four_bit_cuda_kernels();
  r.allocator = allocator_in_use();
  r.cpu_threads = at::get_num_threads();
  r.cpu_interop_threads = at::get_num_interop_threads();
  DeviceChoice device = choose_device(params.device);
  DtypeChoice dtype = choose_dtype(params.dtype, device.device);
  r.device = device.device.str();
  r.device_reason = device.reason;
  r.dtype = dtype_name(dtype.dtype);
  r.dtype_reason = dtype.reason;
  return r;
}

std::string env_report_json(const EnvReport& r) {
  nlohmann::ordered_json j;
  j["llmtune_version"] = r.llmtune_version;
  j["git_rev"] = r.git_rev;
  j["libtorch_version"] = r.libtorch_version;
  j["libtorch_cuda_version"] = r.libtorch_cuda_version ? nlohmann::ordered_json(*r.libtorch_cuda_version) : nullptr;
  j["cuda_kernels_compiled"] = r.cuda_kernels_compiled;
  j["cuda_kernel_archs"] = r.cuda_kernel_archs;
  j["cuda_available"] = r.cuda_available;
  j["cuda_devices"] = nlohmann::ordered_json::array();
  for (const auto& d : r.cuda_devices) {
    nlohmann::ordered_json dj;
    dj["index"] = d.index;
    dj["name"] = d.name;
    dj["compute_capability"] = d.compute_capability;
    dj["total_memory_bytes"] = d.total_memory_bytes;
    dj["free_memory_bytes"] = d.free_memory_bytes >= 0 ? nlohmann::ordered_json(d.free_memory_bytes) : nullptr;
    j["cuda_devices"].push_back(dj);
  }
  j["mps_available"] = r.mps_available;
  j["quantization"] = {{"formats", r.quant_formats},
                       {"format_family", "bitsandbytes"},
                       {"devices", "cpu, cuda, mps"},
                       {"four_bit_cuda_kernels", r.four_bit_cuda_kernels},
                       {"four_bit_cuda_kernels_reason", r.four_bit_cuda_reason}};
  j["allocator"] = r.allocator;
  j["cpu_threads"] = r.cpu_threads;
  j["cpu_interop_threads"] = r.cpu_interop_threads;
  j["default_device"] = r.device;
  j["default_device_reason"] = r.device_reason;
  j["default_dtype"] = r.dtype;
  j["default_dtype_reason"] = r.dtype_reason;
  return j.dump(2);
}

std::string env_report_text(const EnvReport& r) {
  std::string out = fmt::format("llmtune {} (git {})\n", r.llmtune_version, r.git_rev);
  auto line = [&](std::string_view k, const std::string& v) { out += fmt::format("  {:<16} {}\n", k, v); };
  line("libtorch", r.libtorch_version + (r.libtorch_cuda_version ? " (built with CUDA " + *r.libtorch_cuda_version + ")" : " (no CUDA)"));
  line("CUDA kernels", r.cuda_kernels_compiled ? "compiled in (archs " + r.cuda_kernel_archs + ")" : "not compiled in");
  line("CUDA available", r.cuda_available ? fmt::format("yes, {} device(s)", r.cuda_devices.size()) : "no");
  for (const auto& d : r.cuda_devices) {
    std::string mem = gib(d.total_memory_bytes) + (d.free_memory_bytes >= 0 ? ", " + gib(d.free_memory_bytes) + " free" : "");
    line(fmt::format("  cuda:{}", d.index), fmt::format("{} (sm {}), {}", d.name, d.compute_capability, mem));
  }
  line("MPS available", r.mps_available ? "yes" : "no");
  std::string formats;
  for (const auto& f : r.quant_formats) formats += (formats.empty() ? "" : "/") + f;
  line("quantization", "bitsandbytes-compatible " + formats + " on every device (CPU, CUDA, MPS)");
  line("4-bit kernels", r.four_bit_cuda_reason);
  line("allocator", r.allocator);
  line("CPU threads", fmt::format("{} intra-op, {} inter-op", r.cpu_threads, r.cpu_interop_threads));
  line("device", r.device + "  (" + r.device_reason + ")");
  line("dtype", r.dtype + "  (" + r.dtype_reason + ")");
  return out;
}

}  // namespace llmtune::pipelines
