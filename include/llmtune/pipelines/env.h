// `llmtune env`: what this machine offers llmtune, and what --device/--dtype auto would choose.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llmtune::pipelines {

struct EnvParams {
  std::string device = "auto";  // the request to resolve, as --device takes it
  std::string dtype = "auto";
};

struct EnvDevice {
  int index = 0;
  std::string name;
  std::string compute_capability;  // "9.0"; "" when unknown
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = -1;
};

struct EnvReport {
  std::string llmtune_version;
  std::string git_rev;
  std::string libtorch_version;
  std::optional<std::string> libtorch_cuda_version;  // CUDA runtime libtorch was built with
  bool cuda_kernels_compiled = false;
  std::string cuda_kernel_archs;
  bool cuda_available = false;
  std::vector<EnvDevice> cuda_devices;
  bool mps_available = false;
  // Weight formats the quantized linears run in (bitsandbytes-compatible NF4 / FP4 / INT8, on every
  // device), and whether 4-bit CUDA kernels are compiled in (else CUDA runs the ATen path).
  std::vector<std::string> quant_formats;
  bool four_bit_cuda_kernels = false;
  std::string four_bit_cuda_reason;
  std::string allocator;  // "jemalloc 5.3.0-0-g54eaed1d (...)" or "system malloc"
  int cpu_threads = 0;
  int cpu_interop_threads = 0;
  std::string device, device_reason;  // what the request resolves to, and why
  std::string dtype, dtype_reason;
};

EnvReport collect_env(const EnvParams& params);
std::string env_report_json(const EnvReport& report);  // one JSON object
std::string env_report_text(const EnvReport& report);  // aligned lines for people

}  // namespace llmtune::pipelines
