// Splits a chat template into text and tag tokens the way Jinja's lexer does with
// trim_blocks=True and lstrip_blocks=True: newlines normalized, one trailing newline dropped,
// {%- -%} / {{- -}} / {#- -#} whitespace control, comments removed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmtune::tokenizer::jinja {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text, Name, String (unescaped), Op, number spelling
  int line;
  int64_t int_value = 0;
  double float_value = 0;
};

// Throws TemplateError ("chat template line L: ...") on unterminated tags, comments or strings
// and on characters that cannot start a token.
std::vector<Token> lex(const std::string& source);

// "chat template line L: what (hint)" as a TemplateError.
[[noreturn]] void fail(int line, const std::string& what, const std::string& hint);

}  // namespace llmtune::tokenizer::jinja
