// Reading a config file's YAML (private to util/): the text of a file, and its root node or the
// first problem found (a second document, nesting past kMaxYamlDepth, a syntax error, a root that
// is not a map), with the 1-based line it is on.
#pragma once

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <string>
#include <variant>

namespace llmtune::config {

struct YamlProblem {
  int line = 0;
  std::string message;  // appended to "<file>:<line>", starting with ": "
};

// The file's text; ConfigError when it is a directory or cannot be read.
std::string read_text_file(const std::filesystem::path& path);

// The root node (a map, or null for an empty file), or the problem.
std::variant<YAML::Node, YamlProblem> load_config_yaml(const std::string& text);

}  // namespace llmtune::config
