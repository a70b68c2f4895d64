// Expression parsing after jinja2/parser.py: the same precedence (filters bind tighter than
// arithmetic, `~` tighter than `+`, chained comparisons, `a if c else b`), with filter, test,
// method and function names checked against the supported sets as they are parsed.
#include <algorithm>

#include "builtins.h"
#include "parser.h"
#include "parser_impl.h"

namespace llmtune::tokenizer::jinja {

bool Parser::is_tuple_end(const std::vector<std::string>& extra) const {
  if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")")) return true;
  return cur().type == Tok::Name && std::find(extra.begin(), extra.end(), cur().text) != extra.end();
}

ExprPtr Parser::parse_tuple(bool with_condexpr, const std::vector<std::string>& extra, bool explicit_parens) {
  int line = cur().line;
  std::vector<ExprPtr> items;
  bool is_tuple = false;
  while (true) {
    if (!items.empty()) expect_op(",");
    if (is_tuple_end(extra)) break;
    items.push_back(parse_expression(with_condexpr));
    if (is_op(","))
      is_tuple = true;
    else
      break;
  }
  if (!is_tuple) {
    if (!items.empty()) return std::move(items[0]);
    if (!explicit_parens) unexpected("an expression");
  }
  auto e = node(Expr::Kind::TupleLit, line);
  e->children = std::move(items);
  return done(std::move(e));
}

ExprPtr Parser::parse_expression(bool with_condexpr) {
  DepthGuard guard(depth_, cur().line);
  return with_condexpr ? parse_condexpr() : parse_or();
}

ExprPtr Parser::parse_condexpr() {
  ExprPtr e = parse_or();
  while (is_name("if")) {
    int line = cur().line;
    next();
    ExprPtr cond = parse_or();
    ExprPtr other;
    if (is_name("else")) {
      next();
      other = parse_condexpr();
    }
    auto c = node(Expr::Kind::CondExpr, line);
    c->children.push_back(std::move(e));
    c->children.push_back(std::move(cond));
    c->children.push_back(std::move(other));
    e = done(std::move(c));
  }
  return e;
}

ExprPtr Parser::parse_or() {
  ExprPtr e = parse_and();
  while (is_name("or")) {
    int line = cur().line;
    next();
    e = binary("or", std::move(e), parse_and(), line);
  }
  return e;
}

ExprPtr Parser::parse_and() {
  ExprPtr e = parse_not();
  while (is_name("and")) {
    int line = cur().line;
    next();
    e = binary("and", std::move(e), parse_not(), line);
  }
  return e;
}

ExprPtr Parser::parse_not() {
  if (is_name("not")) {
    DepthGuard guard(depth_, cur().line);
    auto e = node(Expr::Kind::Unary, cur().line);
    next();
    e->name = "not";
    e->children.push_back(parse_not());
    return done(std::move(e));
  }
  return parse_compare();
}

ExprPtr Parser::parse_compare() {
  int line = cur().line;
  ExprPtr first = parse_math1();
  auto e = node(Expr::Kind::Compare, line);
  e->children.push_back(std::move(first));
  while (true) {
    static const char* const kCmp[] = {"==", "!=", "<", "<=", ">", ">="};
    std::string op;
    if (cur().type == Tok::Op &&
        std::find_if(std::begin(kCmp), std::end(kCmp), [&](const char* c) { return cur().text == c; }) != std::end(kCmp)) {
      op = cur().text;
      next();
    } else if (is_name("in")) {
      op = "in";
      next();
    } else if (is_name("not") && look().type == Tok::Name && look().text == "in") {
      op = "not in";
      next();
      next();
    } else {
      break;
    }
    e->ops.push_back(op);
    e->children.push_back(parse_math1());
  }
  if (e->ops.empty()) return std::move(e->children[0]);
  return done(std::move(e));
}

ExprPtr Parser::parse_math1() {
  ExprPtr e = parse_concat();
  while (is_op("+") || is_op("-")) {
    std::string op = cur().text;
    int line = cur().line;
    next();
    e = binary(op, std::move(e), parse_concat(), line);
  }
  return e;
}

ExprPtr Parser::parse_concat() {
  ExprPtr e = parse_math2();
  while (is_op("~")) {
    int line = cur().line;
    next();
    e = binary("~", std::move(e), parse_math2(), line);
  }
  return e;
}

ExprPtr Parser::parse_math2() {
  ExprPtr e = parse_pow();
  while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
    std::string op = cur().text;
    int line = cur().line;
    next();
    e = binary(op, std::move(e), parse_pow(), line);
  }
  return e;
}

ExprPtr Parser::parse_pow() {
  ExprPtr e = parse_unary(true);
  while (is_op("**")) {
    int line = cur().line;
    next();
    e = binary("**", std::move(e), parse_unary(true), line);
  }
  return e;
}

ExprPtr Parser::parse_unary(bool with_filter) {
  DepthGuard guard(depth_, cur().line);
  ExprPtr e;
  if (is_op("-") || is_op("+")) {
    e = node(Expr::Kind::Unary, cur().line);
    e->name = cur().text;
    next();
    e->children.push_back(parse_unary(false));
    e = done(std::move(e));
  } else {
    e = parse_primary();
  }
  e = parse_postfix(std::move(e));
  if (with_filter) e = parse_filter_expr(std::move(e));
  return e;
}

ExprPtr Parser::literal(Value v, int line) {
  auto e = node(Expr::Kind::Literal, line);
  e->value = std::move(v);
  return e;
}

ExprPtr Parser::parse_primary() {
  const Token& t = cur();
  int line = t.line;
  switch (t.type) {
    case Tok::Name: {
      std::string n = t.text;
      next();
      if (n == "true" || n == "True") return literal(Value(true), line);
      if (n == "false" || n == "False") return literal(Value(false), line);
      if (n == "none" || n == "None") return literal(Value::none(), line);
      auto e = node(Expr::Kind::Name, line);
      e->name = n;
      return e;
    }
    case Tok::String: {
      std::string s;
      while (cur().type == Tok::String) {  // adjacent literals concatenate
        s += cur().text;
        next();
      }
      return literal(Value(s), line);
    }
    case Tok::Int: next(); return literal(Value(t_[i_ - 1].int_value), line);
    case Tok::Float: next(); return literal(Value(t_[i_ - 1].float_value), line);
    case Tok::Op:
      if (t.text == "(") {
        next();
        ExprPtr e = parse_tuple(true, {}, true);
        expect_op(")");
        return e;
      }
      if (t.text == "[") return parse_list();
      if (t.text == "{") return parse_dict();
      [[fallthrough]];
    default: unexpected("an expression");
  }
}

ExprPtr Parser::parse_list() {
  auto e = node(Expr::Kind::ListLit, cur().line);
  next();
  while (!is_op("]")) {
    if (!e->children.empty()) expect_op(",");
    if (is_op("]")) break;
    e->children.push_back(parse_expression(true));
  }
  next();
  return done(std::move(e));
}

ExprPtr Parser::parse_dict() {
  auto e = node(Expr::Kind::DictLit, cur().line);
  next();
  while (!is_op("}")) {
    if (!e->children.empty()) expect_op(",");
    if (is_op("}")) break;
    e->children.push_back(parse_expression(true));
    expect_op(":");
    e->children.push_back(parse_expression(true));
  }
  next();
  return done(std::move(e));
}

ExprPtr Parser::parse_postfix(ExprPtr e) {
  while (true) {
    if (is_op(".")) {
      int line = cur().line;
      next();
      if (cur().type == Tok::Int) {
        auto s = node(Expr::Kind::Subscript, line);
        s->children.push_back(std::move(e));
        s->children.push_back(literal(Value(cur().int_value), line));
        next();
        e = done(std::move(s));
      } else {
        auto a = node(Expr::Kind::Attr, line);
        a->name = expect_name("an attribute name");
        a->children.push_back(std::move(e));
        e = done(std::move(a));
      }
    } else if (is_op("[")) {
      e = parse_subscript(std::move(e));
    } else if (is_op("(")) {
      e = parse_call(std::move(e));
    } else {
      return e;
    }
  }
}

ExprPtr Parser::parse_subscript(ExprPtr obj) {
  int line = cur().line;
  next();
  ExprPtr parts[3];
  bool is_slice = false;
  int part = 0;
  while (true) {
    if (is_op(":")) {
      if (++part > 2) unexpected("']'");
      is_slice = true;
      next();
      continue;
    }
    if (is_op("]")) break;
    if (is_op(",")) fail(cur().line, "unsupported tuple subscript", "index with a single key");
    if (parts[part]) unexpected("':' or ']'");
    parts[part] = parse_expression(true);
  }
  next();
  if (!is_slice) {
    if (!parts[0]) unexpected("a subscript");
    auto s = node(Expr::Kind::Subscript, line);
    s->children.push_back(std::move(obj));
    s->children.push_back(std::move(parts[0]));
    return done(std::move(s));
  }
  auto s = node(Expr::Kind::Slice, line);
  s->children.push_back(std::move(obj));
  for (int k = 0; k < 3; ++k) s->slice_parts[k] = std::move(parts[k]);
  return done(std::move(s));
}

void Parser::parse_args(Expr& e) {
  expect_op("(");
  size_t n = 0;
  while (!is_op(")")) {
    if (n++ > 0) {
      expect_op(",");
      if (is_op(")")) break;
    }
    if (is_op("*") || is_op("**")) fail(cur().line, "unsupported *args/**kwargs in a call", "pass arguments one by one");
    if (cur().type == Tok::Name && look().type == Tok::Op && look().text == "=") {
      std::string k = cur().text;
      next();
      next();
      e.kwargs.emplace_back(k, parse_expression(true));
    } else {
      if (!e.kwargs.empty()) fail(cur().line, "positional argument after keyword argument", "reorder the arguments");
      e.children.push_back(parse_expression(true));
    }
  }
  next();
}

ExprPtr Parser::parse_call(ExprPtr callee) {
  int line = cur().line;
  if (callee->kind == Expr::Kind::Name) {
    if (!is_global_function(callee->name))
      fail(line, "unsupported function '" + callee->name + "'",
           "chat templates may call raise_exception, strftime_now, range, namespace and dict");
  } else if (callee->kind == Expr::Kind::Attr) {
    if (!is_method(callee->name))
      fail(line, "unsupported method '" + callee->name + "'",
           "supported: str startswith/endswith/split/strip/lstrip/rstrip/upper/lower/replace/title/capitalize, "
           "dict items/keys/values/get");
  } else {
    fail(line, "unsupported call of a computed value", "call a global function or a str/dict method");
  }
  auto e = node(Expr::Kind::Call, line);
  e->children.push_back(std::move(callee));
  parse_args(*e);
  return done(std::move(e));
}

// Filter and test argument names given as string literals are checked here too.
void Parser::check_named_test_arg(const Expr& e, size_t arg_index) {
  if (e.children.size() > arg_index && e.children[arg_index]->kind == Expr::Kind::Literal &&
      e.children[arg_index]->value.is_string()) {
    const std::string& t = e.children[arg_index]->value.as_string();
    if (!is_test(t)) fail(e.line, "unsupported test '" + t + "' in " + e.name, "known tests: " + known_tests());
  }
}

ExprPtr Parser::parse_filter_expr(ExprPtr e) {
  while (true) {
    if (is_op("|")) {
      int line = cur().line;
      next();
      auto f = node(Expr::Kind::Filter, line);
      f->name = expect_name("a filter name");
      while (is_op(".")) {
        next();
        f->name += "." + expect_name("a filter name");
      }
      if (!is_filter(f->name)) fail(line, "unsupported filter '" + f->name + "'", "known filters: " + known_filters());
      f->children.push_back(std::move(e));
      if (is_op("(")) parse_args(*f);
      if (f->name == "select" || f->name == "reject") check_named_test_arg(*f, 1);
      if (f->name == "selectattr" || f->name == "rejectattr") check_named_test_arg(*f, 2);
      if (f->name == "map" && f->children.size() > 1 && f->children[1]->kind == Expr::Kind::Literal &&
          f->children[1]->value.is_string() && !is_filter(f->children[1]->value.as_string()))
        fail(line, "unsupported filter '" + f->children[1]->value.as_string() + "' in map", "known filters: " + known_filters());
      e = done(std::move(f));
    } else if (is_name("is")) {
      int line = cur().line;
      next();
      auto t = node(Expr::Kind::Test, line);
      if (is_name("not")) {
        t->negated = true;
        next();
      }
      t->name = expect_name("a test name");
      if (!is_test(t->name)) fail(line, "unsupported test '" + t->name + "'", "known tests: " + known_tests());
      t->children.push_back(std::move(e));
      if (is_op("(")) {
        parse_args(*t);
      } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                  cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                 !is_name("else") && !is_name("or") && !is_name("and")) {
        if (is_name("is")) fail(cur().line, "cannot chain tests with 'is'", "combine tests with 'and'");
        t->children.push_back(parse_postfix(parse_primary()));
      }
      e = done(std::move(t));
    } else if (is_op("(")) {
      e = parse_call(std::move(e));
    } else {
      return e;
    }
  }
}

}  // namespace llmtune::tokenizer::jinja
