// Renders parsed statements against a context, with Jinja's scoping: each for-loop iteration
// and each generation block gets its own scope; if-blocks do not.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "ast.h"
#include "llmtune/tokenizer/chat_template.h"

namespace llmtune::tokenizer::jinja {

struct RenderResult {
  std::string text;
  // Byte ranges [begin, end) of `text` produced inside {% generation %} blocks.
  std::vector<std::pair<size_t, size_t>> generation_spans;
};

// `context` is a Dict value of template variables. Errors are TemplateErrors with the line,
// also when the render passes `limits`.
RenderResult render(const Body& body, const Value& context, const TemplateLimits& limits);

}  // namespace llmtune::tokenizer::jinja
