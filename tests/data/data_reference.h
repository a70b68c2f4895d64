// Test support: runs tests/data/data_reference.py once on a batch of cases (JSON in and out).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "llmtune/data/dataset.h"

namespace llmtune::testing {

// {"cases": [...]} -> the parsed response; throws std::runtime_error with Python's stderr.
nlohmann::ordered_json data_reference(const nlohmann::ordered_json& request);

std::string fixture_model_dir(const std::string& name);  // build/fixtures/models/<name>

// n seeded examples of 4..max_len tokens (ids 1..99), the last two thirds of each trained.
std::vector<data::Example> random_training_examples(int n, int max_len, uint32_t seed);

}  // namespace llmtune::testing
