// Runs tests/data/data_reference.py with the venv's Python.
#include "data/data_reference.h"

#include "support/interop.h"

#include <filesystem>

namespace llmtune::testing {

std::string fixture_model_dir(const std::string& name) { return std::string(LLMTUNE_FIXTURES_DIR) + "/models/" + name; }

nlohmann::ordered_json data_reference(const nlohmann::ordered_json& request) {
  return run_json_script("tests/data/data_reference.py", request);
}

}  // namespace llmtune::testing
