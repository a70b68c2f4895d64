// Statement parsing (for, if, set, break/continue, generation) after jinja2/parser.py; the
// expression grammar is in parser_expr.cpp. Macros, call blocks, includes and template
// inheritance are rejected by name.
#include "parser.h"

#include <algorithm>

#include "builtins.h"
#include "parser_impl.h"

namespace llmtune::tokenizer::jinja {
namespace {

const char* const kUnsupportedTags[] = {"macro",   "call",  "filter",     "include", "import", "from",
                                        "extends", "block", "raw",        "with",    "autoescape",
                                        "do",      "trans", "pluralize"};

}  // namespace

Body Parser::parse_body(const std::vector<std::string>& ends, std::string* which, const std::string& open_tag,
                          int open_line) {
  Body body;
  while (true) {
    const Token& t = cur();
    if (t.type == Tok::Eof) {
      if (!ends.empty())
        fail(open_line, "unclosed '" + open_tag + "' block",
             "reached the end of the template looking for '" + ends.front() + "'");
      return body;
    }
    if (t.type == Tok::Text) {
      auto s = std::make_unique<Stmt>(Stmt::Kind::Text, t.line);
      s->text = t.text;
      body.push_back(std::move(s));
      next();
    } else if (t.type == Tok::VarBegin) {
      int line = t.line;
      next();
      auto s = std::make_unique<Stmt>(Stmt::Kind::Output, line);
      s->expr = parse_tuple(true, {});
      if (cur().type != Tok::VarEnd) unexpected("'}}'");
      next();
      body.push_back(std::move(s));
    } else if (t.type == Tok::BlockBegin) {
      next();
      if (cur().type != Tok::Name) unexpected("a tag name");
      std::string tag = cur().text;
      if (std::find(ends.begin(), ends.end(), tag) != ends.end()) {
        next();
        *which = tag;
        return body;
      }
      body.push_back(parse_statement());
    } else {
      unexpected("template text or a tag");
    }
  }
}

std::unique_ptr<Stmt> Parser::parse_statement() {
  DepthGuard guard(depth_, cur().line);
  const std::string tag = cur().text;
  int line = cur().line;
  next();
  if (tag == "for") return parse_for(line);
  if (tag == "if") return parse_if(line);
  if (tag == "set") return parse_set(line);
  if (tag == "break" || tag == "continue") {
    if (loop_depth_ == 0) fail(line, "'" + tag + "' outside of a for loop", "use it inside {% for %}");
    expect_block_end();
    return std::make_unique<Stmt>(tag == "break" ? Stmt::Kind::Break : Stmt::Kind::Continue, line);
  }
  if (tag == "generation") {
    expect_block_end();
    auto s = std::make_unique<Stmt>(Stmt::Kind::Generation, line);
    std::string end;
    s->body = parse_body({"endgeneration"}, &end, "generation", line);
    expect_block_end();
    return s;
  }
  if (std::find(std::begin(kUnsupportedTags), std::end(kUnsupportedTags), tag) != std::end(kUnsupportedTags))
    fail(line, "unsupported tag '" + tag + "'",
         "chat templates may use for, if, set, break, continue and generation");
  if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif")
    fail(line, "unexpected '" + tag + "'", "it does not close or continue any open block");
  fail(line, "unknown tag '" + tag + "'", "chat templates may use for, if, set, break, continue and generation");
}

std::vector<std::string> Parser::parse_targets(bool allow_attr, std::string* attr) {
  std::vector<std::string> names;
  bool paren = is_op("(");
  if (paren) next();
  while (true) {
    names.push_back(expect_name("a variable name"));
    if (allow_attr && names.size() == 1 && is_op(".")) {
      next();
      *attr = expect_name("an attribute name");
      return names;
    }
    if (!is_op(",")) break;
    next();
    if (cur().type != Tok::Name) break;  // trailing comma
  }
  if (paren) expect_op(")");
  return names;
}

std::unique_ptr<Stmt> Parser::parse_for(int line) {
  auto s = std::make_unique<Stmt>(Stmt::Kind::For, line);
  s->targets = parse_targets(false, nullptr);
  if (!is_name("in")) unexpected("'in'");
  next();
  s->expr = parse_tuple(false, {"recursive"});
  if (is_name("if")) {
    next();
    s->filter = parse_expression(true);
  }
  if (is_name("recursive")) fail(cur().line, "unsupported recursive for loop", "recursive loops are not in the subset");
  expect_block_end();
  ++loop_depth_;
  std::string end;
  s->body = parse_body({"endfor", "else"}, &end, "for", line);
  --loop_depth_;
  expect_block_end();
  if (end == "else") {
    s->else_body = parse_body({"endfor"}, &end, "for", line);
    expect_block_end();
  }
  return s;
}

std::unique_ptr<Stmt> Parser::parse_if(int line) {
  auto s = std::make_unique<Stmt>(Stmt::Kind::If, line);
  while (true) {
    ExprPtr cond = parse_tuple(false, {});
    expect_block_end();
    std::string end;
    Body body = parse_body({"endif", "elif", "else"}, &end, "if", line);
    s->branches.emplace_back(std::move(cond), std::move(body));
    if (end == "elif") continue;
    if (end == "else") {
      expect_block_end();
      s->else_body = parse_body({"endif"}, &end, "if", line);
    }
    expect_block_end();
    return s;
  }
}

std::unique_ptr<Stmt> Parser::parse_set(int line) {
  auto s = std::make_unique<Stmt>(Stmt::Kind::Set, line);
  s->targets = parse_targets(true, &s->attr);
  if (is_op("=")) {
    next();
    s->expr = parse_tuple(true, {});
    expect_block_end();
    return s;
  }
  if (cur().type == Tok::BlockEnd && s->targets.size() == 1 && s->attr.empty()) {
    next();
    s->kind = Stmt::Kind::SetBlock;
    std::string end;
    s->body = parse_body({"endset"}, &end, "set", line);
    expect_block_end();
    return s;
  }
  if (is_op("|")) fail(cur().line, "unsupported filtered set block", "assign with {% set x = ... | filter %}");
  unexpected("'='");
}

Body parse(const std::string& source) { return Parser(lex(source)).parse_template(); }

}  // namespace llmtune::tokenizer::jinja
