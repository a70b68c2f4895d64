// The evaluator: statements write into one output string; expressions follow Python/Jinja
// semantics (value.h, builtins.h). Failures become one-line TemplateErrors with the line of the
// node being evaluated.
#include "eval.h"

#include <cmath>

#include "builtins.h"
#include "lexer.h"
#include "llmtune/util/error.h"
#include "parser.h"
#include "ustring.h"

namespace llmtune::tokenizer::jinja {
namespace {

enum class Flow { Normal, Break, Continue };

[[noreturn]] void undefined_error(const Value& v) {
  throw EvalError("'" + v.undefined_name() + "' is undefined", "check the variable name or guard it with 'is defined'");
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  throw EvalError("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

[[noreturn]] void overflow() { throw EvalError("integer overflow", "values beyond 64 bits are not supported"); }

// a op b on int64 with Python's exactness: overflow is an error, never a wrapped result.
int64_t int_op(char op, int64_t a, int64_t b) {
  int64_t r = 0;
  bool o = op == '+' ? __builtin_add_overflow(a, b, &r) : op == '-' ? __builtin_sub_overflow(a, b, &r)
                                                                     : __builtin_mul_overflow(a, b, &r);
  if (o) overflow();
  return r;
}

// 2000000 -> "2,000,000", for the budget messages.
std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0 && digits[i - 1] != '-') out += ',';
    out += digits[i];
  }
  return out;
}

std::string byte_size(size_t bytes) {
  constexpr size_t kMiB = size_t{1} << 20;
  return bytes % kMiB == 0 ? std::to_string(bytes / kMiB) + " MiB" : with_commas(static_cast<int64_t>(bytes)) + " bytes";
}

bool is_intlike(const Value& v) { return v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool; }

// `max_bytes`: TemplateLimits::max_bytes, checked before the string is built. An empty sequence
// repeats to itself at once: `'' * 10**15` must not loop 10**15 times.
Value repeat(const Value& seq, int64_t n, size_t max_bytes) {
  constexpr size_t kMaxItems = size_t{1} << 20;
  if (n < 0) n = 0;
  if (seq.is_string()) {
    const size_t len = seq.as_string().size();
    if (len == 0 || n == 0) return Value(std::string());
    if (static_cast<size_t>(n) > max_bytes / len) throw EvalError("string repetition too large");
    std::string out;
    out.reserve(len * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out += seq.as_string();
    return Value(out);
  }
  const size_t len = seq.items().size();
  if (len > 0 && static_cast<size_t>(n) > kMaxItems / len) throw EvalError("list repetition too large");
  List out;
  if (len > 0)
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return seq.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b, size_t max_bytes) {
  if (op == "~") return Value(to_str(a) + to_str(b));
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_sequence() && a.kind() == b.kind()) {
      List out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    if (a.is_string() && !b.is_undefined())
      throw EvalError("can only concatenate str (not \"" + type_name(b) + "\") to str", "convert with |string or use ~");
  }
  if (op == "*") {
    if ((a.is_string() || a.is_sequence()) && is_intlike(b)) return repeat(a, b.as_int(), max_bytes);
    if (is_intlike(a) && (b.is_string() || b.is_sequence())) return repeat(b, a.as_int(), max_bytes);
  }
  if (!a.is_number() || !b.is_number()) bad_operands(op, a, b);
  bool ints = is_intlike(a) && is_intlike(b);
  int64_t x = a.as_int(), y = b.as_int();
  double fx = a.as_float(), fy = b.as_float();
  if (op == "+") return ints ? Value(int_op('+', x, y)) : Value(fx + fy);
  if (op == "-") return ints ? Value(int_op('-', x, y)) : Value(fx - fy);
  if (op == "*") return ints ? Value(int_op('*', x, y)) : Value(fx * fy);
  if (op == "/") {
    if (fy == 0) throw EvalError("division by zero");
    return Value(fx / fy);
  }
  if (op == "//" || op == "%") {
    if (ints) {
      if (y == 0) throw EvalError("integer division or modulo by zero");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      return Value(op == "//" ? q : m);
    }
    if (fy == 0) throw EvalError("float division or modulo by zero");
    double m = std::fmod(fx, fy);
    if (m != 0 && ((m < 0) != (fy < 0))) m += fy;
    if (op == "%") return Value(m);
    // Python's float floor division: floor((x - mod) / y), corrected for rounding.
    double div = (fx - m) / fy, q = std::floor(div);
    if (div - q > 0.5) q += 1.0;
    return Value(q);
  }
  if (op == "**") {
    if (ints && y >= 0) {
      int64_t out = 1;
      for (int64_t i = 0; i < y; ++i) out = int_op('*', out, x);
      return Value(out);
    }
    return Value(std::pow(fx, fy));
  }
  throw EvalError("unknown operator '" + op + "'");
}

bool contains(const Value& container, const Value& needle) {
  switch (container.kind()) {
    case Value::Kind::String:
      if (!needle.is_string())
        throw EvalError("'in <string>' requires string as left operand, not " + type_name(needle));
      return container.as_string().find(needle.as_string()) != std::string::npos;
    case Value::Kind::Dict: return needle.is_string() && container.dict_ref().find(needle.as_string()) != nullptr;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      for (const Value& x : container.items())
        if (equals(x, needle)) return true;
      return false;
    case Value::Kind::Undefined: return false;
    default: throw EvalError("argument of type '" + type_name(container) + "' is not iterable");
  }
}

bool compare(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "not in") return !contains(b, a);
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (op == "<") return less(a, b);
  if (op == ">") return less(b, a);
  if (op == "<=") return !less(b, a);
  return !less(a, b);  // >=
}

std::optional<int64_t> slice_bound(const Value& v) {
  if (v.is_none() || v.is_undefined()) return std::nullopt;
  if (!is_intlike(v)) throw EvalError("slice indices must be integers or none, got " + type_name(v));
  return v.as_int();
}

class Evaluator {
 public:
  Evaluator(const Value& context, RenderResult& result, const TemplateLimits& limits)
      : result_(result), limits_(limits) {
    scopes_.push_back(make_globals());
    Value frame = Value::dict();
    for (const auto& [k, v] : context.dict_ref().entries) frame.dict_ref().set(k, v);
    scopes_.push_back(frame);
  }

  void run(const Body& body) {
    try {
      exec(body);
    } catch (const RaisedError& e) {
      fail(line_, e.what(), "raised by the template's raise_exception");
    } catch (const EvalError& e) {
      fail(line_, e.what(), e.hint.empty() ? "while rendering the chat template" : e.hint);
    }
  }

 private:
  Flow exec(const Body& body) {
    for (const auto& s : body) {
      Flow f = exec_stmt(*s);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  // The budgets of TemplateLimits, per render.
  void tick() {
    if (++steps_ > limits_.max_steps)
      throw EvalError("the template ran past its budget of " + with_commas(limits_.max_steps) + " evaluation steps",
                      "a loop that runs too long, e.g. nested range() loops; the template is refused");
  }
  void check_size(size_t bytes, const char* what) const {
    if (bytes > limits_.max_bytes)
      throw EvalError(std::string("the template built ") + what + " over " + byte_size(limits_.max_bytes),
                      "a string that keeps doubling, or output without bound; the template is refused");
  }

  Flow exec_stmt(const Stmt& s) {
    tick();
    const Flow f = exec_stmt_unchecked(s);
    check_size(result_.text.size(), "output");
    return f;
  }

  Flow exec_stmt_unchecked(const Stmt& s) {
    line_ = s.line;
    switch (s.kind) {
      case Stmt::Kind::Text: result_.text += s.text; return Flow::Normal;
      case Stmt::Kind::Output: {
        Value v = eval(*s.expr);
        result_.text += to_str(v);
        return Flow::Normal;
      }
      case Stmt::Kind::If:
        for (const auto& [cond, body] : s.branches)
          if (eval(*cond).truthy()) return exec(body);
        return exec(s.else_body);
      case Stmt::Kind::For: return exec_for(s);
      case Stmt::Kind::Set: {
        Value v = eval(*s.expr);
        line_ = s.line;
        if (!s.attr.empty()) {
          Value ns = lookup(s.targets[0]);
          if (ns.kind() != Value::Kind::Namespace)
            throw EvalError("cannot assign attribute on non-namespace object '" + s.targets[0] + "'",
                            "create it with namespace(...)");
          if (s.attr[0] == '_') throw EvalError("cannot store underscore-prefixed attribute '" + s.attr + "' on a namespace");
          ns.dict_ref().set(s.attr, v);
        } else {
          bind(s.targets, v);
        }
        return Flow::Normal;
      }
      case Stmt::Kind::SetBlock: {
        std::string saved;
        std::swap(saved, result_.text);
        Flow f = exec(s.body);
        std::swap(saved, result_.text);
        scopes_.back().dict_ref().set(s.targets[0], Value(saved));
        return f;
      }
      case Stmt::Kind::Break: return Flow::Break;
      case Stmt::Kind::Continue: return Flow::Continue;
      case Stmt::Kind::Generation: {
        size_t begin = result_.text.size();
        push_scope();
        Flow f = exec(s.body);
        scopes_.pop_back();
        result_.generation_spans.emplace_back(begin, result_.text.size());
        return f;
      }
    }
    return Flow::Normal;
  }

  void push_scope() {
    if (scopes_.size() > static_cast<size_t>(kMaxNesting) * 2) throw EvalError("scopes nested too deeply");
    scopes_.push_back(Value::dict());
  }

  void bind(const std::vector<std::string>& targets, const Value& v) {
    Dict& frame = scopes_.back().dict_ref();
    if (targets.size() == 1) {
      frame.set(targets[0], v);
      return;
    }
    List items = iterate(v, "unpacking");
    if (items.size() != targets.size())
      throw EvalError("cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()) +
                      " names");
    for (size_t i = 0; i < targets.size(); ++i) frame.set(targets[i], items[i]);
  }

  Flow exec_for(const Stmt& s) {
    Value seq = eval(*s.expr);
    List items = iterate(seq, "the for loop iterates over it");
    if (s.filter) {
      List kept;
      for (const Value& item : items) {
        push_scope();
        bind(s.targets, item);
        bool keep = eval(*s.filter).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      line_ = s.line;
      return exec(s.else_body);
    }
    int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      tick();  // an iteration is a step even when its body is empty (nested range() loops)
      push_scope();
      bind(s.targets, items[i]);
      Value loop = Value::dict();
      Dict& l = loop.dict_ref();
      l.set("index", Value(i + 1));
      l.set("index0", Value(i));
      l.set("revindex", Value(n - i));
      l.set("revindex0", Value(n - i - 1));
      l.set("first", Value(i == 0));
      l.set("last", Value(i == n - 1));
      l.set("length", Value(n));
      l.set("depth", Value(1));
      l.set("depth0", Value(0));
      if (i > 0) l.set("previtem", items[i - 1]);
      if (i + 1 < n) l.set("nextitem", items[i + 1]);
      scopes_.back().dict_ref().set("loop", loop);
      Flow f = exec(s.body);
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      if (const Value* v = it->dict_ref().find(name)) return *v;
    return Value::undefined(name);
  }

  Args eval_args(const Expr& e, size_t first) {
    Args a;
    for (size_t i = first; i < e.children.size(); ++i) a.positional.push_back(eval(*e.children[i]));
    for (const auto& [k, v] : e.kwargs) a.keyword.emplace_back(k, eval(*v));
    return a;
  }

  Value eval(const Expr& e) {
    tick();
    Value v = eval_unchecked(e);
    if (v.is_string()) check_size(v.as_string().size(), "a string");
    return v;
  }

  Value eval_unchecked(const Expr& e) {
    line_ = e.line;
    switch (e.kind) {
      case Expr::Kind::Literal: return e.value;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::ListLit:
      case Expr::Kind::TupleLit: {
        List items;
        for (const auto& c : e.children) items.push_back(eval(*c));
        return e.kind == Expr::Kind::ListLit ? Value::list(std::move(items)) : Value::tuple(std::move(items));
      }
      case Expr::Kind::DictLit: {
        Value d = Value::dict();
        for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
          Value k = eval(*e.children[i]);
          if (!k.is_string()) throw EvalError("dict literal keys must be strings, got " + type_name(k));
          d.dict_ref().set(k.as_string(), eval(*e.children[i + 1]));
        }
        return d;
      }
      case Expr::Kind::Attr: {
        Value obj = eval(*e.children[0]);
        line_ = e.line;
        return get_attr(obj, e.name);
      }
      case Expr::Kind::Subscript: {
        Value obj = eval(*e.children[0]);
        Value key = eval(*e.children[1]);
        line_ = e.line;
        return get_item(obj, key);
      }
      case Expr::Kind::Slice: return eval_slice(e);
      case Expr::Kind::Call: {
        const Expr& callee = *e.children[0];
        if (callee.kind == Expr::Kind::Attr) {
          Value obj = eval(*callee.children[0]);
          Args a = eval_args(e, 1);
          line_ = e.line;
          return call_method(obj, callee.name, a);
        }
        Value fn = eval(callee);
        Args a = eval_args(e, 1);
        line_ = e.line;
        if (fn.kind() != Value::Kind::Callable) {
          if (fn.is_undefined()) undefined_error(fn);
          throw EvalError("'" + type_name(fn) + "' object is not callable");
        }
        return fn.function()(a);
      }
      case Expr::Kind::Filter: {
        Value v = eval(*e.children[0]);
        Args a = eval_args(e, 1);
        line_ = e.line;
        return apply_filter(e.name, v, a);
      }
      case Expr::Kind::Test: {
        Value v = eval(*e.children[0]);
        Args a = eval_args(e, 1);
        line_ = e.line;
        return Value(apply_test(e.name, v, a) != e.negated);
      }
      case Expr::Kind::Unary: {
        Value v = eval(*e.children[0]);
        line_ = e.line;
        if (e.name == "not") return Value(!v.truthy());
        if (!v.is_number()) {
          if (v.is_undefined()) undefined_error(v);
          throw EvalError("bad operand type for unary " + e.name + ": '" + type_name(v) + "'");
        }
        if (e.name == "+") return is_intlike(v) ? Value(v.as_int()) : v;
        if (!is_intlike(v)) return Value(-v.as_float());
        if (v.as_int() == INT64_MIN) overflow();
        return Value(-v.as_int());
      }
      case Expr::Kind::Binary: {
        Value a = eval(*e.children[0]);
        if (e.name == "and") return a.truthy() ? eval(*e.children[1]) : a;
        if (e.name == "or") return a.truthy() ? a : eval(*e.children[1]);
        Value b = eval(*e.children[1]);
        line_ = e.line;
        return arithmetic(e.name, a, b, limits_.max_bytes);
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.children[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.children[i + 1]);
          line_ = e.line;
          if (!compare(e.ops[i], left, right)) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::CondExpr: {
        if (eval(*e.children[1]).truthy()) return eval(*e.children[0]);
        if (e.children[2]) return eval(*e.children[2]);
        return Value::undefined("the inline if-expression's else branch");
      }
    }
    return Value();
  }

  Value eval_slice(const Expr& e) {
    Value obj = eval(*e.children[0]);
    std::optional<int64_t> parts[3];
    for (int k = 0; k < 3; ++k)
      if (e.slice_parts[k]) parts[k] = slice_bound(eval(*e.slice_parts[k]));
    line_ = e.line;
    if (obj.is_undefined()) undefined_error(obj);
    if (obj.is_string()) {
      std::u32string u = ustr::decode(obj.as_string());
      std::u32string out;
      for (int64_t i : ustr::slice_indices(static_cast<int64_t>(u.size()), parts[0], parts[1], parts[2])) out += u[i];
      return Value(ustr::encode(out));
    }
    if (!obj.is_sequence()) throw EvalError("'" + type_name(obj) + "' object is not subscriptable with a slice");
    List out;
    const List& items = obj.items();
    for (int64_t i : ustr::slice_indices(static_cast<int64_t>(items.size()), parts[0], parts[1], parts[2]))
      out.push_back(items[i]);
    return obj.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
  }

  RenderResult& result_;
  const TemplateLimits& limits_;
  std::vector<Value> scopes_;
  int line_ = 1;
  int64_t steps_ = 0;
};

}  // namespace

RenderResult render(const Body& body, const Value& context, const TemplateLimits& limits) {
  RenderResult result;
  Evaluator(context, result, limits).run(body);
  return result;
}

}  // namespace llmtune::tokenizer::jinja
