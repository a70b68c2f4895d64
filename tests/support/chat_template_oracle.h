// The chat-template oracle: test files register cases (template + context) while the test
// binary starts; the first lookup renders every registered case in ONE Python process with
// transformers' own environment (tests/interop/render_chat_templates.py) and caches the results.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::testing {

enum class OracleMode {
  Hf,     // render_jinja_template: what apply_chat_template(tokenize=False) renders
  Jinja,  // the same compiled environment's template.render(**context)
};

struct OracleResult {
  bool ok = false;
  std::string output;  // when ok
  std::string error;   // "Type: message" when the reference raised
  std::vector<std::pair<size_t, size_t>> spans;  // Hf: {% generation %} ranges, in characters
};

// Registers a case; returns the handle to look its result up with. Call before main() runs
// (from a static initializer) so that one Python run covers every case.
size_t register_oracle_case(const std::string& template_source, OracleMode mode, nlohmann::ordered_json context);

// The reference result for a registered case (runs Python on first use).
const OracleResult& oracle_result(size_t handle);

// Reads a shipped template from tests/data/chat_templates/<name>.jinja.
std::string read_chat_template(const std::string& name);

// Converts byte offsets of a UTF-8 string into code-point offsets (Python's str indices).
size_t char_offset(const std::string& utf8, size_t byte_offset);

}  // namespace llmtune::testing
