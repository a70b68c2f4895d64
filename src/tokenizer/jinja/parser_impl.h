// The parser class shared by parser.cpp (statements) and parser_expr.cpp (expressions),
// after jinja2/parser.py. Private to the jinja engine.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "ast.h"
#include "lexer.h"

namespace llmtune::tokenizer::jinja {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Body parse_template() {
    std::string end;
    Body body = parse_body({}, &end);
    return body;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& look(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  void next() {
    if (i_ + 1 < t_.size()) ++i_;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::BlockEnd: return "'%}'";
      case Tok::VarEnd: return "'}}'";
      case Tok::Text: return "template text";
      case Tok::String: return "string literal";
      default: return "'" + t.text + "'";
    }
  }

  [[noreturn]] void unexpected(const std::string& wanted) const {
    fail(cur().line, "expected " + wanted + ", got " + describe(cur()), "check the tag's syntax");
  }

  void expect_op(const char* op) {
    if (!is_op(op)) unexpected(std::string("'") + op + "'");
    next();
  }

  std::string expect_name(const std::string& what) {
    if (cur().type != Tok::Name) unexpected(what);
    std::string n = cur().text;
    next();
    return n;
  }

  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) unexpected("'%}'");
    next();
  }

  // Caps nesting depth so hostile templates cannot exhaust the stack.
  struct DepthGuard {
    DepthGuard(int& d, int line) : d_(d) {
      if (++d_ > kMaxNesting)
        fail(line, "template nested deeper than " + std::to_string(kMaxNesting) + " levels", "simplify the template");
    }
    ~DepthGuard() { --d_; }
    int& d_;
  };

  ExprPtr node(Expr::Kind k, int line) { return std::make_unique<Expr>(k, line); }

  // Records a finished node's height and enforces the nesting limit.
  ExprPtr done(ExprPtr e) {
    int h = 0;
    for (const auto& c : e->children)
      if (c) h = std::max(h, c->height);
    for (const auto& [k, c] : e->kwargs) h = std::max(h, c->height);
    for (const auto& c : e->slice_parts)
      if (c) h = std::max(h, c->height);
    e->height = h + 1;
    if (e->height > kMaxNesting)
      fail(e->line, "expression nested deeper than " + std::to_string(kMaxNesting) + " levels", "simplify the expression");
    return e;
  }

  ExprPtr binary(std::string op, ExprPtr a, ExprPtr b, int line) {
    auto e = node(Expr::Kind::Binary, line);
    e->name = std::move(op);
    e->children.push_back(std::move(a));
    e->children.push_back(std::move(b));
    return done(std::move(e));
  }


  // Parses statements until a block tag named in `ends` (consumed up to its name); `which`
  // receives that name. At top level (`ends` empty) parses to the end of the template.
  Body parse_body(const std::vector<std::string>& ends, std::string* which, const std::string& open_tag = "",
                  int open_line = 0);
  std::unique_ptr<Stmt> parse_statement();
  std::vector<std::string> parse_targets(bool allow_attr, std::string* attr);
  std::unique_ptr<Stmt> parse_for(int line);
  std::unique_ptr<Stmt> parse_if(int line);
  std::unique_ptr<Stmt> parse_set(int line);

  // ---- expressions ------------------------------------------------------------------------
  bool is_tuple_end(const std::vector<std::string>& extra) const;
  ExprPtr parse_tuple(bool with_condexpr, const std::vector<std::string>& extra, bool explicit_parens = false);
  ExprPtr parse_expression(bool with_condexpr);
  ExprPtr parse_condexpr();
  ExprPtr parse_or();
  ExprPtr parse_and();
  ExprPtr parse_not();
  ExprPtr parse_compare();
  ExprPtr parse_math1();
  ExprPtr parse_concat();
  ExprPtr parse_math2();
  ExprPtr parse_pow();
  ExprPtr parse_unary(bool with_filter);
  ExprPtr literal(Value v, int line);
  ExprPtr parse_primary();
  ExprPtr parse_list();
  ExprPtr parse_dict();
  ExprPtr parse_postfix(ExprPtr e);
  ExprPtr parse_subscript(ExprPtr obj);
  void parse_args(Expr& e);
  ExprPtr parse_call(ExprPtr callee);
  // Filter and test argument names given as string literals are checked here too.
  void check_named_test_arg(const Expr& e, size_t arg_index);
  ExprPtr parse_filter_expr(ExprPtr e);

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace llmtune::tokenizer::jinja
