// Regular expressions that come from files a user downloads (PEFT's patterns in adapter_config.json)
// or writes (config keys), matched as Python's re would but never hanging or overflowing the stack.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "llmtune/util/error.h"

namespace llmtune {

// A pattern that does not compile, or whose match ran past a limit. The message is one line that
// names the pattern by the `what` given to BoundedRegex (e.g. "adapter_config.json: rank_pattern key").
class RegexError : public Error {
 public:
  using Error::Error;
};

// PCRE2 (UTF, Unicode classes as Python's str patterns) under limits std::regex lacks: a match
// budget (backtracking such as (a|aa)*b stops with an error instead of running for hours), a
// backtracking-depth and heap bound (its recursion in std::regex blew the stack), and caps on the
// pattern's length and parenthesis nesting. Copies share the compiled code.
class BoundedRegex {
 public:
  enum class Anchor { start, full };  // Python's re.match and re.fullmatch

  // `written`: the part of `pattern` a person wrote, shown in errors when the pattern wraps it (as
  // PEFT wraps a rank_pattern key); empty when it is the whole pattern. Throws RegexError
  // "<what> '<written>' is not a valid regular expression (at offset N of '<pattern>': why)".
  BoundedRegex(const std::string& pattern, Anchor anchor, std::string what, const std::string& written = "");

  // Whether the pattern matches `subject` (anchored as constructed). Throws RegexError when the
  // match runs past a limit.
  bool match(std::string_view subject) const;
  // The same; on a match `captured` gets named group `group`'s text, or nullopt when the group took
  // no part (Python's m.group(name) is None).
  bool match(std::string_view subject, const char* group, std::optional<std::string>& captured) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_, what_;  // what_: "<what> '<written>'", as errors begin
  std::shared_ptr<const Compiled> compiled_;
};

}  // namespace llmtune
