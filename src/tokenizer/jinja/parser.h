// Parses lexer tokens into statements (jinja2/parser.py's grammar for the supported subset).
// Unsupported tags, filters, tests, methods and functions are TemplateErrors naming the
// construct and its line.
#pragma once

#include <string>

#include "ast.h"

namespace llmtune::tokenizer::jinja {

// Deepest nesting of blocks or expression nodes a template may have.
constexpr int kMaxNesting = 200;

Body parse(const std::string& source);

}  // namespace llmtune::tokenizer::jinja
