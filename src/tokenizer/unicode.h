// UTF-8 and Unicode helpers shared by the tokenizer pipeline: code-point iteration, the lossy
// decoding that Rust's String::from_utf8_lossy does (what HF decoders produce), and character classes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace llmtune::tokenizer::unicode {

// Length in bytes of the valid UTF-8 sequence starting at s[i], or 0 when it is invalid.
size_t valid_sequence_length(std::string_view s, size_t i);
// Length of the character at s[i] for iteration over text already known to be valid UTF-8.
inline size_t char_length(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
uint32_t decode_at(std::string_view s, size_t i);  // the code point at s[i] (valid UTF-8)
void append_utf8(std::string& out, uint32_t cp);

bool is_valid_utf8(std::string_view s);
// Invalid sequences become U+FFFD, one per maximal invalid subpart (Unicode 3.9 / WHATWG; the
// same as Rust's from_utf8_lossy and Python's errors="replace").
std::string to_valid_utf8(std::string_view bytes);

bool is_whitespace(uint32_t cp);      // Unicode White_Space (Rust char::is_whitespace)
bool is_word_character(uint32_t cp);  // \w: letters, marks, decimal digits, connector punctuation
bool is_numeric(uint32_t cp);         // general category N (Nd, Nl, No): Rust char::is_numeric

// Unicode normal forms via utf8proc; `form` is "NFC", "NFD", "NFKC" or "NFKD".
std::string normalize(std::string_view text, std::string_view form);

}  // namespace llmtune::tokenizer::unicode
