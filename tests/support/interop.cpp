// Raw-file exchange with tests/interop/reference.py.
#include "support/interop.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/max.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace llmtune::testing {
namespace {

namespace fs = std::filesystem;

std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kBool: return "bool";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    default: throw std::runtime_error("interop: unsupported dtype");
  }
}

at::ScalarType dtype_from(const std::string& s) {
  for (auto t : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16, at::kLong, at::kInt, at::kBool, at::kByte, at::kChar})
    if (dtype_str(t) == s) return t;
  throw std::runtime_error("interop: unknown dtype " + s);
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<at::Tensor> call_python(const std::string& function, const std::vector<at::Tensor>& inputs,
                                    const nlohmann::json& params) {
  fs::path dir = fs::temp_directory_path() / ("llmtune-interop-" + std::to_string(::getpid()) + "-" + function);
  fs::remove_all(dir);
  fs::create_directories(dir);
  nlohmann::json manifest{{"function", function}, {"params", params}, {"inputs", nlohmann::json::array()}};
  for (size_t i = 0; i < inputs.size(); ++i) {
    at::Tensor t = inputs[i].contiguous().cpu();
    std::string file = "in" + std::to_string(i) + ".bin";
    std::ofstream(dir / file, std::ios::binary).write(static_cast<const char*>(t.const_data_ptr()), t.nbytes());
    manifest["inputs"].push_back({{"file", file}, {"dtype", dtype_str(t.scalar_type())}, {"shape", t.sizes().vec()}});
  }
  std::ofstream(dir / "manifest.json") << manifest.dump();

  std::string cmd = std::string("\"") + LLMTUNE_TEST_PYTHON + "\" \"" + LLMTUNE_SOURCE_DIR +
                    "/tests/interop/reference.py\" \"" + dir.string() + "\" 2> \"" + (dir / "stderr.txt").string() + "\"";
  int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::string err = read_all(dir / "stderr.txt");
    fs::remove_all(dir);
    throw std::runtime_error("reference.py " + function + " failed: " + err);
  }
  auto out_manifest = nlohmann::json::parse(read_all(dir / "outputs.json"));
  std::vector<at::Tensor> outputs;
  for (const auto& o : out_manifest) {
    std::string bytes = read_all(dir / o["file"].get<std::string>());
    auto shape = o["shape"].get<std::vector<int64_t>>();
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dtype_from(o["dtype"])));
    if (static_cast<size_t>(t.nbytes()) != bytes.size()) throw std::runtime_error("interop: output size mismatch");
    std::memcpy(t.mutable_data_ptr(), bytes.data(), bytes.size());
    outputs.push_back(t);
  }
  fs::remove_all(dir);
  return outputs;
}

nlohmann::ordered_json run_json_script(const std::string& script, const nlohmann::ordered_json& request) {
  static int calls = 0;
  fs::path dir = fs::temp_directory_path() /
                 ("llmtune-script-" + std::to_string(::getpid()) + "-" + std::to_string(calls++));
  fs::create_directories(dir);
  std::ofstream(dir / "request.json") << request.dump();
  std::string cmd = std::string("\"") + LLMTUNE_TEST_PYTHON + "\" \"" + LLMTUNE_SOURCE_DIR + "/" + script + "\" \"" +
                    (dir / "request.json").string() + "\" \"" + (dir / "response.json").string() + "\" 2> \"" +
                    (dir / "stderr.txt").string() + "\"";
  if (std::system(cmd.c_str()) != 0) {
    std::string err = read_all(dir / "stderr.txt");
    fs::remove_all(dir);
    throw std::runtime_error(script + " failed: " + err);
  }
  auto response = nlohmann::ordered_json::parse(read_all(dir / "response.json"));
  fs::remove_all(dir);
  return response;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.cpu().to(at::kDouble) - b.cpu().to(at::kDouble)).abs().max().item<double>();
}

}  // namespace llmtune::testing
