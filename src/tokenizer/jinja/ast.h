// The parsed form of a chat template: expression and statement nodes, each with the template
// line it came from (for error messages).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "value.h"

namespace llmtune::tokenizer::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,    // value
    Name,       // name
    ListLit,    // children
    TupleLit,   // children
    DictLit,    // children: key, value, key, value, ...
    Attr,       // children[0].name
    Subscript,  // children[0][children[1]]
    Slice,      // children[0][a:b:c]; slice_parts hold start/stop/step (null when absent)
    Call,       // children[0](children[1..], kwargs)
    Filter,     // children[0] | name(children[1..], kwargs)
    Test,       // children[0] is [not] name(children[1..])
    Unary,      // op children[0]: "-", "+", "not"
    Binary,     // children[0] op children[1]: + - * / // % ** ~ and or
    Compare,    // children[0] ops[i] children[i+1] ...
    CondExpr,   // children: then, condition, else (null when absent)
  };
  Kind kind;
  int line;
  int height = 1;  // depth of the subtree, bounded so evaluation cannot exhaust the stack
  Value value;
  std::string name;  // identifier, attribute, filter/test name, operator
  bool negated = false;
  std::vector<ExprPtr> children;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  ExprPtr slice_parts[3];

  Expr(Kind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum class Kind {
    Text,        // text
    Output,      // {{ expr }}
    If,          // branches (cond, body); else_body
    For,         // targets in expr [if filter]: body [else else_body]
    Set,         // targets (or ns.attr) = expr
    SetBlock,    // {% set name %}body{% endset %}
    Break,
    Continue,
    Generation,  // {% generation %}body{% endgeneration %}
  };
  Kind kind;
  int line;
  std::string text;
  ExprPtr expr;
  ExprPtr filter;
  std::vector<std::string> targets;
  std::string attr;  // Set on a namespace: targets[0].attr
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;

  Stmt(Kind k, int l) : kind(k), line(l) {}
};

}  // namespace llmtune::tokenizer::jinja
