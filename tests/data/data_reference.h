// Test support: runs tests/data/data_reference.py once on a batch of cases (JSON in and out).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace llmtune::testing {

// {"cases": [...]} -> the parsed response; throws std::runtime_error with Python's stderr.
nlohmann::ordered_json data_reference(const nlohmann::ordered_json& request);

std::string fixture_model_dir(const std::string& name);  // build/fixtures/models/<name>

}  // namespace llmtune::testing
