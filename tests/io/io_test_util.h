// Helpers for the io tests: a temporary directory per test, raw file bytes, and running a Python
// snippet with the reference libraries (safetensors, transformers, huggingface_hub).
#pragma once

#include <ATen/core/Tensor.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace llmtune::testing {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("llmtune-io-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

inline std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_bytes(const fs::path& p, std::string_view bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A path or string as a Python literal (a JSON string literal is one).
inline std::string py_str(const std::string& s) { return nlohmann::json(s).dump(); }

// Runs `script` with the venv's Python in `dir`; returns stdout, throws with stderr on failure.
inline std::string run_python(const fs::path& dir, const std::string& script) {
  write_bytes(dir / "script.py", script);
  const std::string cmd = std::string("cd \"") + dir.string() + "\" && \"" + LLMTUNE_TEST_PYTHON +
                          "\" script.py > stdout.txt 2> stderr.txt";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) throw std::runtime_error("python failed:\n" + read_bytes(dir / "stderr.txt") + "\nscript:\n" + script);
  return read_bytes(dir / "stdout.txt");
}

// The tensor's bytes (contiguous, CPU) in hex, as Python's `.view(torch.uint8)...hex()` gives them.
inline std::string hex_of(const at::Tensor& tensor) {
  const at::Tensor t = tensor.cpu().contiguous();
  const auto* p = static_cast<const unsigned char*>(t.const_data_ptr());
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < t.nbytes(); ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 15];
  }
  return out;
}

}  // namespace llmtune::testing
