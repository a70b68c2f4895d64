// PCRE2 wrapper: compile once (JIT when the platform has it), match with per-call match data.
#include "regex.h"

#include <pcre2.h>

#include <memory>

#include "llmtune/util/error.h"
#include "unicode.h"

namespace llmtune::tokenizer {

Regex::Regex(const std::string& pattern, const std::string& where) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  // No PCRE2_NO_UTF_CHECK at compile time: a malformed pattern from a file must be an error.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    throw TokenizerError(where + ": regex " + pattern + " does not compile at offset " + std::to_string(offset) +
                         ": " + reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter where JIT is missing
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  std::vector<std::pair<size_t, size_t>> matches;
  // Oniguruma's find_iter (what tokenizers runs): every match, empty ones included, except an
  // empty match right where the previous match ended; after an empty match the search resumes
  // one character further on. An empty match is a split point for Split (a lookahead such as
  // SuperBPE's "(?=(\\d{3})+(?!\\d))" splits only so).
  size_t start = 0;
  bool have_last = false;
  size_t last_end = 0;
  while (start <= text.size()) {
    // The text was validated once on entry to encode(); skip PCRE2's per-call UTF check.
    int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, PCRE2_NO_UTF_CHECK,
                         data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw TokenizerError(std::string("regex match failed: ") + reinterpret_cast<const char*>(message));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
    size_t b = ov[0], e = ov[1];
    if (e == b && have_last && last_end == e) {  // the empty match where the last one ended: step on
      if (start >= text.size()) break;
      start += unicode::char_length(static_cast<unsigned char>(text[start]));
      continue;
    }
    matches.emplace_back(b, e);
    have_last = true;
    last_end = e;
    start = e;
  }
  return matches;
}

}  // namespace llmtune::tokenizer
