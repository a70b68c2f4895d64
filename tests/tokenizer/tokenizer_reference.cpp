// Runs tests/tokenizer/hf_reference.py with the venv's Python, JSON in and out.
#include "tokenizer/tokenizer_reference.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace llmtune::testing {

namespace fs = std::filesystem;

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
  fs::path tmp = fs::temp_directory_path() /
                 ("llmtune-tokref-" + std::to_string(::getpid()) + "-" + fs::path(dir).filename().string());
  fs::create_directories(tmp);
  std::ofstream(tmp / "request.json") << nlohmann::json{{"dir", dir}, {"texts", texts}, {"decode", decode}}.dump();
  std::string cmd = std::string("\"") + LLMTUNE_TEST_PYTHON + "\" \"" + LLMTUNE_SOURCE_DIR +
                    "/tests/tokenizer/hf_reference.py\" \"" + (tmp / "request.json").string() + "\" \"" +
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
    throw std::runtime_error("hf_reference.py failed for " + dir + ": " + err);
  }
  auto response = nlohmann::json::parse(slurp(tmp / "response.json"));
  fs::remove_all(tmp);
  return response;
}

}  // namespace llmtune::testing
