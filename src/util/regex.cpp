// PCRE2 behind BoundedRegex: compiled once with a length and nesting cap, matched by the
// interpreter (not the JIT, which ignores the depth and heap limits) under a match budget.
#include "llmtune/util/regex.h"

#include <pcre2.h>

#include <cstdio>

namespace llmtune {
namespace {

// Module paths and patterns a person needs are a few hundred steps to match; a million is far
// beyond any of them and stops a runaway pattern in well under a second.
constexpr uint32_t kMatchLimit = 1'000'000;
constexpr uint32_t kDepthLimit = 10'000;     // nested backtracking points
constexpr uint32_t kHeapLimitKiB = 64 * 1024;  // the backtracking frames' memory
constexpr size_t kMaxPatternLength = 65'536;
constexpr uint32_t kParensNestLimit = 250;

// The pattern or subject as shown in one error line: control bytes escaped, long ones cut.
std::string shown(std::string_view s) {
  constexpr size_t kMax = 80;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "... (" + std::to_string(s.size()) + " bytes)";
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR message[256];
  pcre2_get_error_message(code, message, sizeof(message));
  return reinterpret_cast<const char*>(message);
}

}  // namespace

struct BoundedRegex::Compiled {
  std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)> code{nullptr, &pcre2_code_free};
  std::unique_ptr<pcre2_match_context, decltype(&pcre2_match_context_free)> context{nullptr, &pcre2_match_context_free};
};

BoundedRegex::BoundedRegex(const std::string& pattern, Anchor anchor, std::string what, const std::string& written)
    : pattern_(pattern), what_(std::move(what) + " '" + shown(written.empty() ? pattern : written) + "'") {
  auto fail = [&](const std::string& where, const std::string& why) {
    throw RegexError(what_ + " is not a valid regular expression (" + where +
                     (written.empty() ? "" : " of '" + shown(pattern) + "'") + ": " + why + ")");
  };
  std::unique_ptr<pcre2_compile_context, decltype(&pcre2_compile_context_free)> cctx(
      pcre2_compile_context_create(nullptr), &pcre2_compile_context_free);
  pcre2_set_max_pattern_length(cctx.get(), kMaxPatternLength);
  pcre2_set_parens_nest_limit(cctx.get(), kParensNestLimit);
  const uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED | (anchor == Anchor::full ? PCRE2_ENDANCHORED : 0);
  int error = 0;
  PCRE2_SIZE offset = 0;
  auto compiled = std::make_shared<Compiled>();
  compiled->code.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                     &offset, cctx.get()));
  if (!compiled->code) fail("at offset " + std::to_string(offset), pcre2_message(error));
  compiled->context.reset(pcre2_match_context_create(nullptr));
  if (!compiled->context) throw RegexError(what_ + ": out of memory creating a PCRE2 match context");
  pcre2_set_match_limit(compiled->context.get(), kMatchLimit);
  pcre2_set_depth_limit(compiled->context.get(), kDepthLimit);
  pcre2_set_heap_limit(compiled->context.get(), kHeapLimitKiB);
  compiled_ = std::move(compiled);
}

bool BoundedRegex::match(std::string_view subject) const {
  std::optional<std::string> unused;
  return match(subject, nullptr, unused);
}

bool BoundedRegex::match(std::string_view subject, const char* group, std::optional<std::string>& captured) const {
  pcre2_code* code = compiled_->code.get();
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
      pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  if (!data) throw RegexError(what_ + ": out of memory creating PCRE2 match data");
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(subject.data()), subject.size(), 0, 0, data.get(),
                             compiled_->context.get());
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT)
    throw RegexError(what_ + " backtracks without end on '" + shown(subject) + "' (" +
                     pcre2_message(rc) + "; no module path needs such a pattern): simplify it");
  if (rc < 0)
    throw RegexError(what_ + " cannot be matched against '" + shown(subject) +
                     "': " + pcre2_message(rc));
  if (group) {
    captured.reset();
    const int number = pcre2_substring_number_from_name(code, reinterpret_cast<PCRE2_SPTR>(group));
    if (number > 0 && number < rc) {
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
      if (ov[2 * number] != PCRE2_UNSET) captured = std::string(subject.substr(ov[2 * number], ov[2 * number + 1] - ov[2 * number]));
    }
  }
  return true;
}

}  // namespace llmtune
