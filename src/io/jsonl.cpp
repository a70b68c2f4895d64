// JSONL reader.
#include "llmtune/io/jsonl.h"

#include <fstream>

#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::io {

void read_jsonl(const std::filesystem::path& path, const std::function<void(int64_t, const nlohmann::ordered_json&)>& row) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path.string() + ": cannot open the data file");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::ordered_json j;
    try {
      j = parse_json_bounded(line);
    } catch (const nlohmann::ordered_json::parse_error& e) {
      throw DataError(path.string() + ":" + std::to_string(n) + ": not valid JSON (" + e.what() + ")");
    } catch (const JsonTooDeep& e) {
      throw DataError(path.string() + ":" + std::to_string(n) + ": refused: " + e.what());
    } catch (const nlohmann::ordered_json::exception& e) {  // a number beyond a double (1e999)
      throw DataError(path.string() + ":" + std::to_string(n) + ": a number is out of range (" + json_error_text(e) + ")");
    }
    if (!j.is_object()) throw DataError(path.string() + ":" + std::to_string(n) + ": each line must be a JSON object");
    row(n, j);
  }
}

}  // namespace llmtune::io
