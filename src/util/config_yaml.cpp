// A config file's YAML: one document of nested maps and lists, within the depth budget, read
// without the yaml-cpp hangs hostile files found. Split from config.cpp (the typed filling).
#include "config_yaml.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "llmtune/util/config.h"
#include "llmtune/util/error.h"

namespace llmtune::config {
namespace {

// YAML::LoadAll, guarded against a yaml-cpp 0.7 hang: a document that starts with a stray flow
// token (',' at the top level) is returned empty without being consumed, so LoadAll reads it
// again forever, growing without bound. One pass with a no-op handler first: a document starting
// where the previous one started is that case, reported as a syntax error at its mark.
std::vector<YAML::Node> load_all_documents(const std::string& text) {
  struct DocumentStarts : YAML::EventHandler {
    const std::string& text;
    std::optional<size_t> last;
    explicit DocumentStarts(const std::string& t) : text(t) {}
    void OnDocumentStart(const YAML::Mark& mark) override {
      const auto pos = static_cast<size_t>(mark.pos);
      if (last == pos)
        throw YAML::ParserException(mark, "unexpected '" + text.substr(pos, 1) + "' (a stray flow character?)");
      last = pos;
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
  };
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentStarts starts(text);
  while (parser.HandleNextDocument(starts)) {
  }
  return YAML::LoadAll(text);
}

// Height of a YAML node (a scalar is 1), each distinct node counted once: aliases share their
// anchor's node (and its mark), so an alias bomb costs one visit per anchor, not one per use.
int yaml_height(const YAML::Node& node, std::map<std::pair<int, int>, int>& memo) {
  if (!node.IsSequence() && !node.IsMap()) return 1;
  const std::pair<int, int> at{node.Mark().line, node.Mark().column};
  if (auto it = memo.find(at); it != memo.end()) return it->second;
  memo[at] = 1;  // only guards the recursion: a parsed tree has no cycles
  int below = 0;
  for (const auto& item : node) {
    if (node.IsMap()) below = std::max({below, yaml_height(item.first, memo), yaml_height(item.second, memo)});
    else below = std::max(below, yaml_height(item, memo));
  }
  return memo[at] = below + 1;
}

// The line of the first map or list nested deeper than kMaxYamlDepth, looked for below `node`, a
// map or list at nesting `level` (the root is 1) that holds one.
int too_deep_line(const YAML::Node& node, int level, std::map<std::pair<int, int>, int>& memo) {
  if (level > kMaxYamlDepth) return node.Mark().line + 1;
  for (const auto& item : node) {
    for (const YAML::Node& child : node.IsMap() ? std::vector<YAML::Node>{item.first, item.second} : std::vector<YAML::Node>{item})
      if ((child.IsMap() || child.IsSequence()) && level + yaml_height(child, memo) - 1 > kMaxYamlDepth)
        return too_deep_line(child, level + 1, memo);
  }
  return node.Mark().line + 1;
}

// The 1-based line where the second YAML document of `text` starts ("---" after some content).
int second_document_line(const std::string& text) {
  std::istringstream lines(text);
  bool content = false;
  int n = 0;
  for (std::string line; std::getline(lines, line);) {
    ++n;
    const bool marker = line.starts_with("---") && (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
    if (marker && content) return n;
    const auto first = line.find_first_not_of(" \t\r");
    if (!marker && first != std::string::npos && line[first] != '#' && !line.starts_with("%")) content = true;
  }
  return n;
}

}  // namespace

std::string read_text_file(const std::filesystem::path& path) {
  if (std::filesystem::is_directory(path))
    throw ConfigError(path.string() + ": is a directory, not a config file (give the path of a .yaml file)");
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw ConfigError(path.string() + ": cannot read the config file (" +
                      (std::filesystem::exists(path) ? "permission denied?" : "no such file") + ")");
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}


std::variant<YAML::Node, YamlProblem> load_config_yaml(const std::string& text) {
  const std::string too_deep =
      ": nested deeper than " + std::to_string(kMaxYamlDepth) + " levels (a config is a few levels of maps)";
  try {
    std::vector<YAML::Node> documents = load_all_documents(text);
    YAML::Node root = documents.empty() ? YAML::Node() : documents[0];
    std::map<std::pair<int, int>, int> memo;
    if (documents.size() > 1)
      return YamlProblem{second_document_line(text),
                         ": a second YAML document ('---'); a config file holds one (merge them, or split them into two files)"};
    if (yaml_height(root, memo) > kMaxYamlDepth + 1) return YamlProblem{too_deep_line(root, 1, memo), too_deep};
    if (!root.IsMap() && !root.IsNull())
      return YamlProblem{root.Mark().line + 1, ": the config must be a map of key: value lines"};
    return root;
  } catch (const YAML::DeepRecursion& e) {  // yaml-cpp's own guard, deeper than ours
    return YamlProblem{e.mark.line + 1, too_deep};
  } catch (const YAML::Exception& e) {
    return YamlProblem{e.mark.line + 1, ":" + std::to_string(e.mark.column + 1) + ": YAML syntax error: " + e.msg};
  }
}

}  // namespace llmtune::config
