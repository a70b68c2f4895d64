// Runs tests/tokenizer/hf_reference.py with the venv's Python, JSON in and out.
#include "tokenizer/tokenizer_reference.h"

#include <fstream>
#include <sstream>

#include "support/interop.h"

namespace llmtune::testing {

std::string fixture_tokenizer_dir(const std::string& name) {
  return std::string(LLMTUNE_FIXTURES_DIR) + "/tokenizers/" + name;
}

std::vector<std::string> corpus_lines() {
  std::ifstream in(std::string(LLMTUNE_SOURCE_DIR) + "/tests/data/corpus.txt", std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t pos; (pos = text.find('\n', start)) != std::string::npos; start = pos + 1)
    lines.push_back(text.substr(start, pos - start));
  lines.push_back(text.substr(start));
  return lines;
}

nlohmann::json hf_reference(const std::string& dir, const std::vector<std::string>& texts,
                            const std::vector<std::vector<int32_t>>& decode) {
  nlohmann::ordered_json request{{"dir", dir}, {"texts", texts}, {"decode", decode}};
  return nlohmann::json(run_json_script("tests/tokenizer/hf_reference.py", request));
}

}  // namespace llmtune::testing
