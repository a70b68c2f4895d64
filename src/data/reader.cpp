// Dataset files: JSON Lines, or one JSON array of row objects, with the line each row starts on.
#include <fstream>
#include <sstream>

#include "llmtune/data/dataset.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::data {
namespace {

std::string slurp(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path.string() + ": cannot open the data file (check the path)");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.compare(0, 3, "\xEF\xBB\xBF") == 0) s.erase(0, 3);  // a UTF-8 byte order mark
  return s;
}

// The 1-based line on which each element of the top-level array in `s` starts (valid JSON).
std::vector<int64_t> element_lines(const std::string& s) {
  std::vector<int64_t> lines;
  int64_t line = 1;
  int depth = 0;
  bool in_string = false, escaped = false, expect_value = false;
  for (char c : s) {
    if (c == '\n') ++line;
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (depth == 1 && expect_value && c != ']') {
      lines.push_back(line);
      expect_value = false;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') expect_value = (++depth == 1);
    else if (c == ']' || c == '}') --depth;
    else if (c == ',' && depth == 1) expect_value = true;
  }
  return lines;
}

int64_t line_of_byte(const std::string& s, size_t byte) {
  int64_t line = 1;
  for (size_t i = 0; i < byte && i < s.size(); ++i) line += s[i] == '\n';
  return line;
}

}  // namespace

void read_rows(const std::filesystem::path& path, const std::function<void(int64_t, const nlohmann::ordered_json&)>& row,
               const std::function<void(int64_t, const std::string&)>& bad) {
  std::string text = slurp(path);
  const std::string file = path.string();
  auto fail = [&](int64_t line, const std::string& message) {
    if (!bad) throw DataError(file + ":" + std::to_string(line) + ": " + message);
    bad(line, message);
  };
  size_t first = text.find_first_not_of(" \t\r\n");
  if (path.extension() == ".json" && first != std::string::npos && text[first] == '[') {
    nlohmann::ordered_json all;
    try {
      all = io::parse_json_bounded(text);
    } catch (const nlohmann::ordered_json::parse_error& e) {
      throw DataError(file + ":" + std::to_string(line_of_byte(text, e.byte ? e.byte - 1 : 0)) +
                      ": not valid JSON (" + e.what() + "); a .json dataset must be one JSON array of row objects");
    } catch (const io::JsonTooDeep& e) {
      throw DataError(file + ": refused: " + e.what());
    } catch (const nlohmann::ordered_json::exception& e) {  // a number beyond a double (1e999)
      throw DataError(file + ": a number is out of range (" + io::json_error_text(e) + ")");
    }
    std::vector<int64_t> lines = element_lines(text);
    for (size_t i = 0; i < all.size(); ++i) {
      int64_t line = i < lines.size() ? lines[i] : 0;
      if (!all[i].is_object()) {
        fail(line, std::string("row ") + std::to_string(i) + " of the array is a " + all[i].type_name() +
                       ", not a JSON object");
        continue;
      }
      row(line, all[i]);
    }
    return;
  }
  size_t start = 0;
  for (int64_t n = 1; start < text.size(); ++n) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    nlohmann::ordered_json j;
    try {
      j = io::parse_json_bounded(line);
    } catch (const nlohmann::ordered_json::parse_error& e) {
      fail(n, std::string("not valid JSON (") + e.what() + "); each line of a .jsonl file must be one JSON object");
      continue;
    } catch (const io::JsonTooDeep& e) {
      fail(n, std::string("refused: ") + e.what());
      continue;
    } catch (const nlohmann::ordered_json::exception& e) {  // a number beyond a double (1e999)
      fail(n, "a number is out of range (" + io::json_error_text(e) + ")");
      continue;
    }
    if (!j.is_object()) {
      fail(n, std::string("each line must be a JSON object, got a ") + j.type_name());
      continue;
    }
    row(n, j);
  }
}

}  // namespace llmtune::data
