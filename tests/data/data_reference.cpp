// Runs tests/data/data_reference.py with the venv's Python.
#include "data/data_reference.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace llmtune::testing {

namespace fs = std::filesystem;

std::string fixture_model_dir(const std::string& name) { return std::string(LLMTUNE_FIXTURES_DIR) + "/models/" + name; }

nlohmann::ordered_json data_reference(const nlohmann::ordered_json& request) {
  static int calls = 0;
  fs::path tmp = fs::temp_directory_path() /
                 ("llmtune-dataref-" + std::to_string(::getpid()) + "-" + std::to_string(calls++));
  fs::create_directories(tmp);
  std::ofstream(tmp / "request.json") << request.dump();
  std::string cmd = std::string("\"") + LLMTUNE_TEST_PYTHON + "\" \"" + LLMTUNE_SOURCE_DIR +
                    "/tests/data/data_reference.py\" \"" + (tmp / "request.json").string() + "\" \"" +
                    (tmp / "response.json").string() + "\" 2> \"" + (tmp / "stderr.txt").string() + "\"";
  int rc = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  if (rc != 0) {
    std::string err = slurp(tmp / "stderr.txt");
    fs::remove_all(tmp);
    throw std::runtime_error("data_reference.py failed: " + err);
  }
  auto response = nlohmann::ordered_json::parse(slurp(tmp / "response.json"));
  fs::remove_all(tmp);
  return response;
}

}  // namespace llmtune::testing
