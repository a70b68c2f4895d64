// Python str semantics on UTF-8 std::strings: code-point length, indexing and slicing,
// Unicode whitespace for strip/split/trim, case mapping.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llmtune::tokenizer::jinja::ustr {

std::u32string decode(const std::string& s);
std::string encode(const std::u32string& s);
void append_utf8(std::string& out, char32_t c);
size_t length(const std::string& s);  // code points
// Python's str.isspace() for one code point.
bool is_space(char32_t c);

// str.strip/lstrip/rstrip; `chars` absent means whitespace.
std::string strip(const std::string& s, const std::optional<std::string>& chars, bool left, bool right);
// str.split(sep=None, maxsplit=-1) and with an explicit separator.
std::vector<std::string> split(const std::string& s, const std::optional<std::string>& sep, int64_t maxsplit);
std::string upper(const std::string& s);
std::string lower(const std::string& s);
std::string title(const std::string& s);       // str.title()
std::string capitalize(const std::string& s);  // str.capitalize() (Jinja's filter lowers the rest too)
// str.replace(old, new, count=-1).
std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count);

// Python's slice of a sequence of `n` elements: the indices it selects.
std::vector<int64_t> slice_indices(int64_t n, std::optional<int64_t> start, std::optional<int64_t> stop,
                                   std::optional<int64_t> step);

}  // namespace llmtune::tokenizer::jinja::ustr
