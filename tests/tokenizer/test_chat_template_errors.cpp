// Errors: unsupported constructs and syntax errors are one-line TemplateErrors naming the
// construct and its line, raised while parsing; raise_exception carries the template's message;
// hostile nesting fails cleanly instead of exhausting the stack.
#include <gtest/gtest.h>

#include <string>

#include "llmtune/tokenizer/chat_template.h"
#include "llmtune/util/error.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::ordered_json;

// The message of the TemplateError that parsing (and, when `render` is set, rendering) throws.
std::string error_of(const std::string& source, bool render = false, const ordered_json& ctx = ordered_json::object()) {
  try {
    ChatTemplate t(source);
    if (!render) return "parsed without error";
    t.render(ctx);
    return "rendered without error";
  } catch (const TemplateError& e) {
    return e.what();
  }
}

// The message of the TemplateError that rendering `source` under `limits` throws.
std::string error_of_with(TemplateLimits limits, const std::string& source) {
  try {
    ChatTemplate(source, limits).render(ordered_json::object());
    return "rendered without error";
  } catch (const TemplateError& e) {
    return e.what();
  }
}

void expect_error(const std::string& message, int line, const std::string& fragment) {
  EXPECT_EQ(message.rfind("chat template line " + std::to_string(line) + ": ", 0), 0u) << message;
  EXPECT_NE(message.find(fragment), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
}

TEST(ChatTemplateErrors, UnsupportedConstructsAtParseTime) {
  expect_error(error_of("ok\n{{ x | nosuchfilter }}"), 2, "unsupported filter 'nosuchfilter'");
  expect_error(error_of("{% if x is nosuchtest %}{% endif %}"), 1, "unsupported test 'nosuchtest'");
  expect_error(error_of("{{ xs | select('nosuchtest') | list }}"), 1, "unsupported test 'nosuchtest' in select");
  expect_error(error_of("a\nb\n{% macro m() %}x{% endmacro %}"), 3, "unsupported tag 'macro'");
  expect_error(error_of("{% call foo() %}{% endcall %}"), 1, "unsupported tag 'call'");
  expect_error(error_of("{% include 'other.jinja' %}"), 1, "unsupported tag 'include'");
  expect_error(error_of("{% extends 'base' %}"), 1, "unsupported tag 'extends'");
  expect_error(error_of("{% raw %}{{ x }}{% endraw %}"), 1, "unsupported tag 'raw'");
  expect_error(error_of("{% frobnicate %}"), 1, "unknown tag 'frobnicate'");
  expect_error(error_of("{{ x.append(1) }}"), 1, "unsupported method 'append'");
  expect_error(error_of("{{ cycler(1, 2) }}"), 1, "unsupported function 'cycler'");
  expect_error(error_of("{% for x in xs recursive %}{% endfor %}"), 1, "unsupported recursive for loop");
  expect_error(error_of("{% break %}"), 1, "'break' outside of a for loop");
}

TEST(ChatTemplateErrors, SyntaxErrorsCarryTheLine) {
  expect_error(error_of("line1\n{% for m in messages %}\n{{ m }}"), 2, "unclosed 'for' block");
  expect_error(error_of("{% if x %}\nyes\n{% else %}\nno"), 1, "unclosed 'if' block");
  expect_error(error_of("a\n{% endif %}"), 2, "unexpected 'endif'");
  expect_error(error_of("{% for m in messages %}{% endif %}{% endfor %}"), 1, "unexpected 'endif'");
  expect_error(error_of("x\n\n{{ 'unterminated }}"), 3, "unterminated string literal");
  expect_error(error_of("{{ x "), 1, "unexpected end of template inside '{{'");
  expect_error(error_of("{# never closed"), 1, "missing end of comment tag");
  expect_error(error_of("{{ (1 + 2 }}"), 1, "unexpected '}'");
  expect_error(error_of("{{ 1 + }}"), 1, "expected an expression");
  expect_error(error_of("{{ x ? y }}"), 1, "unexpected character '?'");
  expect_error(error_of("{% set %}"), 1, "expected a variable name");
  expect_error(error_of("{{ f(a=1, 2) }}"), 1, "unsupported function 'f'");
  expect_error(error_of("{{ range(a=1, 2) }}"), 1, "positional argument after keyword argument");
}

TEST(ChatTemplateErrors, RenderErrorsCarryTheLine) {
  ordered_json ctx = {{"x", "s"}, {"n", 1}};
  expect_error(error_of("ok\n{{ missing.attr }}", true, ctx), 2, "'missing' is undefined");
  expect_error(error_of("{{ x + n }}", true, ctx), 1, "can only concatenate str");
  expect_error(error_of("{{ n / 0 }}", true, ctx), 1, "division by zero");
  expect_error(error_of("{% for a, b in [1] %}{% endfor %}", true, ctx), 1, "not iterable");
  expect_error(error_of("{% set ns.x = 1 %}", true, ctx), 1, "non-namespace");
  expect_error(error_of("{{ 9223372036854775807 + 1 }}", true, ctx), 1, "integer overflow");
  expect_error(error_of("{{ x|tojson(ensure_ascii=true) }}", true, ctx), 1, "ensure_ascii");
  expect_error(error_of("{{ range(1000000)|length }}", true, ctx), 1, "range too big");
}

TEST(ChatTemplateErrors, RaiseExceptionPropagatesTheMessage) {
  std::string msg = error_of("a\nb\n{{ raise_exception('Only user and assistant roles are supported!') }}", true);
  expect_error(msg, 3, "Only user and assistant roles are supported!");
  EXPECT_NE(msg.find("raise_exception"), std::string::npos) << msg;
  // Computed messages too.
  expect_error(error_of("{{ raise_exception('bad role: ' ~ role) }}", true, {{"role", "narrator"}}), 1,
               "bad role: narrator");
}

TEST(ChatTemplateErrors, DeepNestingFailsCleanly) {
  std::string parens(100000, '(');
  expect_error(error_of("{{ " + parens + "1" + std::string(100000, ')') + " }}"), 1, "nested deeper");
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  expect_error(error_of(chain + " }}"), 1, "nested deeper");
  std::string filters = "{{ x";
  for (int i = 0; i < 100000; ++i) filters += "|trim";
  expect_error(error_of(filters + " }}"), 1, "nested deeper");
  std::string blocks;
  for (int i = 0; i < 10000; ++i) blocks += "{% if true %}";
  expect_error(error_of(blocks), 1, "nested deeper");
  std::string nots = "{{ ";
  for (int i = 0; i < 100000; ++i) nots += "not ";
  expect_error(error_of(nots + "x }}"), 1, "nested deeper");

  // Deep data in the context is refused, not recursed into without bound.
  ordered_json deep = ordered_json::array();
  ordered_json* cur = &deep;
  for (int i = 0; i < 5000; ++i) {
    cur->push_back(ordered_json::array());
    cur = &cur->back();
  }
  try {
    ChatTemplate("{{ x }}").render({{"x", deep}});
    FAIL() << "expected a TemplateError";
  } catch (const TemplateError& e) {
    EXPECT_NE(std::string(e.what()).find("nested deeper"), std::string::npos) << e.what();
  }
  // Moderate nesting still works.
  EXPECT_EQ(ChatTemplate("{{ " + std::string(50, '(') + "1" + std::string(50, ')') + " }}").render(ordered_json::object()),
            "1");
}

TEST(ChatTemplateErrors, RendersStopAtTheirLimits) {
  // 100 iterations of one output statement: ~200 steps and 100 bytes of output.
  const std::string loop = "{% for i in range(100) %}x{% endfor %}";
  EXPECT_EQ(ChatTemplate(loop).render(ordered_json::object()), std::string(100, 'x'));
  expect_error(error_of_with({.max_steps = 50}, loop), 1, "ran past its budget of 50 evaluation steps");
  EXPECT_EQ(ChatTemplate(loop, {.max_steps = 1000}).render(ordered_json::object()), std::string(100, 'x'));
  expect_error(error_of_with({.max_bytes = 99}, loop), 1, "built output over 99 bytes");
  EXPECT_EQ(ChatTemplate(loop, {.max_bytes = 100}).render(ordered_json::object()), std::string(100, 'x'));
  // Strings are checked as they are built, before they reach the output; repetition before it allocates.
  expect_error(error_of_with({.max_bytes = 1000}, "{% set s = 'ab' * 600 %}"), 1, "string repetition too large");
  expect_error(error_of_with({.max_bytes = size_t{1} << 20},
                             "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"),
               1, "built a string over 1 MiB");
  // Found by fuzzing: an empty string or list repeated 10**15 times looped 10**15 times.
  EXPECT_EQ(ChatTemplate("{{ '' * 1000000000000000 }}{{ ([] * 1000000000000000) | length }}").render(ordered_json::object()), "0");
  EXPECT_EQ(ChatTemplate("{{ ('ab' * 0) ~ ([1] * -5) | length }}").render(ordered_json::object()), "0");
  expect_error(error_of("{{ [1, 2] * 4611686018427387904 }}", true), 1, "list repetition too large");
  expect_error(error_of("{{ {'a': 1} | tojson(indent=1000000000000000) }}", true), 1, "tojson indent is longer than 1024");
  // The defaults, as the messages give them.
  expect_error(error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", true), 1,
               "ran past its budget of 2,000,000 evaluation steps");
  EXPECT_THROW(ChatTemplate("x", {.max_steps = 0}), TemplateError);
  EXPECT_THROW(ChatTemplate("x", {.max_bytes = 0}), TemplateError);
}

TEST(ChatTemplateErrors, ContextMustBeAnObject) {
  EXPECT_THROW(ChatTemplate("x").render(ordered_json::array()), TemplateError);
  EXPECT_THROW(chat_template_context(ordered_json::object(), false, "", ""), TemplateError);
  EXPECT_THROW(chat_template_context(ordered_json::array({1}), false, "", ""), TemplateError);
}

}  // namespace
}  // namespace llmtune::tokenizer
