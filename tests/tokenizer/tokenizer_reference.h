// Test support: AutoTokenizer's answers for a fixture, computed by hf_reference.py in one Python
// process per call (starting transformers costs seconds).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmtune::testing {

std::string fixture_tokenizer_dir(const std::string& name);  // build/fixtures/tokenizers/<name>
std::vector<std::string> corpus_lines();                     // tests/data/corpus.txt split at '\n'

// Runs hf_reference.py on `texts` and the id lists in `decode`; the parsed response.
nlohmann::json hf_reference(const std::string& dir, const std::vector<std::string>& texts,
                            const std::vector<std::vector<int32_t>>& decode);

}  // namespace llmtune::testing
