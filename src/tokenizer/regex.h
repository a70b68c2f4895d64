// PCRE2 (UTF + UCP, JIT where available) for the pre-tokenizer patterns of tokenizer.json, which
// tokenizers runs with Oniguruma: \p{L}, \p{Lu}, \p{M}, \p{Han}, lookaround, possessive
// quantifiers, case-insensitive groups. Not Oniguruma's nested classes ([a[bc]]) or && intersections.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmtune::tokenizer {

class Regex {
 public:
  // Throws TokenizerError naming `where` when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) byte ranges of the successive non-overlapping matches in `text` (valid UTF-8),
  // empty matches included as Oniguruma's find_iter reports them.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  void* code_ = nullptr;  // pcre2_code*
};

// A tokenizer.json pattern, {"String": s} (literal, returned as first) or {"Regex": r}.
std::pair<std::string, std::unique_ptr<Regex>> parse_pattern(const nlohmann::json& pattern, const std::string& where);

// `text` with every match of `regex` (or, when regex is null, every occurrence of `literal`)
// replaced by `content`.
std::string replace_all(const std::string& text, const std::string& literal, const Regex* regex,
                        const std::string& content,
                        std::vector<uint32_t>* src = nullptr);

}  // namespace llmtune::tokenizer
