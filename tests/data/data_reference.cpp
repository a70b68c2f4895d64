// Runs tests/data/data_reference.py with the venv's Python.
#include "data/data_reference.h"

#include "support/interop.h"

#include <filesystem>
#include <random>

namespace llmtune::testing {

std::string fixture_model_dir(const std::string& name) { return std::string(LLMTUNE_FIXTURES_DIR) + "/models/" + name; }

nlohmann::ordered_json data_reference(const nlohmann::ordered_json& request) {
  return run_json_script("tests/data/data_reference.py", request);
}

std::vector<data::Example> random_training_examples(int n, int max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<data::Example> out;
  for (int i = 0; i < n; ++i) {
    data::Example ex;
    const int len = 4 + static_cast<int>(rng() % (max_len - 3));
    for (int k = 0; k < len; ++k) {
      const int32_t id = 1 + static_cast<int32_t>(rng() % 99);
      ex.input_ids.push_back(id);
      ex.labels.push_back(k >= len / 3 ? id : data::kIgnoreIndex);
    }
    out.push_back(std::move(ex));
  }
  return out;
}

}  // namespace llmtune::testing
