// Tests, str/dict methods, attribute and item access, and the globals of HF's chat-template
// environment (transformers/utils/chat_template_utils.py), after jinja2/tests.py and
// jinja2/sandbox.py.
#include "builtins.h"

#include <algorithm>
#include <array>
#include <ctime>

#include "ustring.h"

namespace llmtune::tokenizer::jinja {
namespace {

const std::array<const char*, 11> kStrMethods = {"startswith", "endswith", "split",   "strip", "lstrip",    "rstrip",
                                                 "upper",      "lower",    "replace", "title", "capitalize"};
const std::array<const char*, 4> kDictMethods = {"items", "keys", "values", "get"};
const std::array<const char*, 33> kTests = {
    "defined", "undefined", "none",      "mapping",  "iterable", "string",    "number", "integer",
    "float",   "sequence",  "true",      "false",    "boolean",  "equalto",   "eq",     "==",
    "ne",      "!=",        "lt",        "<",        "le",       "<=",        "gt",     ">",
    "ge",      ">=",        "in",        "sameas",   "lower",    "upper",    "odd",      "even",      "divisibleby"};
const std::array<const char*, 5> kGlobals = {"raise_exception", "strftime_now", "range", "namespace", "dict"};

template <size_t N>
bool contains(const std::array<const char*, N>& names, const std::string& n) {
  return std::any_of(names.begin(), names.end(), [&](const char* x) { return n == x; });
}

template <size_t N>
std::string join_names(const std::array<const char*, N>& names) {
  std::string out;
  for (const char* n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

[[noreturn]] void undefined_error(const Value& v) {
  throw EvalError("'" + v.undefined_name() + "' is undefined", "check the variable name or guard it with 'is defined'");
}

const Value& arg(const Args& args, size_t i, const std::string& name, const std::string& what) {
  const Value* v = args.get(i, name);
  if (!v) throw EvalError(what + " is missing its argument '" + name + "'");
  return *v;
}

std::string string_arg(const Args& args, size_t i, const std::string& name, const std::string& what) {
  const Value& v = arg(args, i, name, what);
  if (!v.is_string()) throw EvalError(what + " expects a string for '" + name + "', got " + type_name(v));
  return v.as_string();
}

std::optional<std::string> optional_string(const Args& args, size_t i, const std::string& name, const std::string& what) {
  const Value* v = args.get(i, name);
  if (!v || v->is_none()) return std::nullopt;
  if (!v->is_string()) throw EvalError(what + " expects a string or none for '" + name + "', got " + type_name(*v));
  return v->as_string();
}

int64_t int_arg(const Args& args, size_t i, const std::string& name, int64_t dflt, const std::string& what) {
  const Value* v = args.get(i, name);
  if (!v || v->is_none()) return dflt;
  if (v->kind() != Value::Kind::Int && v->kind() != Value::Kind::Bool)
    throw EvalError(what + " expects an integer for '" + name + "', got " + type_name(*v));
  return v->as_int();
}

// prefix may be a string or a tuple of strings, like Python's str.startswith.
bool affix_matches(const std::string& s, const Value& affix, bool start) {
  auto one = [&](const Value& a) {
    if (!a.is_string()) throw EvalError("startswith/endswith expects a string or a tuple of strings, got " + type_name(a));
    const std::string& p = a.as_string();
    if (p.size() > s.size()) return false;
    return start ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (affix.kind() == Value::Kind::Tuple) {
    for (const Value& a : affix.items())
      if (one(a)) return true;
    return false;
  }
  return one(affix);
}

Value bound_method(const Value& obj, const std::string& name) {
  return Value::callable(name, [obj, name](const Args& a) { return call_method(obj, name, a); });
}

Value string_method(const std::string& s, const std::string& name, const Args& args) {
  const std::string what = "str." + name + "()";
  if (name == "startswith" || name == "endswith") {
    args.check(what, 1, {});
    return Value(affix_matches(s, arg(args, 0, "prefix", what), name == "startswith"));
  }
  if (name == "split") {
    args.check(what, 2, {"sep", "maxsplit"});
    List parts;
    for (auto& p : ustr::split(s, optional_string(args, 0, "sep", what), int_arg(args, 1, "maxsplit", -1, what)))
      parts.emplace_back(std::move(p));
    return Value::list(std::move(parts));
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    args.check(what, 1, {"chars"});
    return Value(ustr::strip(s, optional_string(args, 0, "chars", what), name != "rstrip", name != "lstrip"));
  }
  if (name == "replace") {
    args.check(what, 3, {"count"});
    return Value(ustr::replace(s, string_arg(args, 0, "old", what), string_arg(args, 1, "new", what),
                               int_arg(args, 2, "count", -1, what)));
  }
  args.check(what, 0, {});
  if (name == "upper") return Value(ustr::upper(s));
  if (name == "lower") return Value(ustr::lower(s));
  if (name == "title") return Value(ustr::title(s));
  if (name == "capitalize") return Value(ustr::capitalize(s));
  throw EvalError("'str' object has no method '" + name + "'");
}

Value dict_method(const Value& d, const std::string& name, const Args& args) {
  const std::string what = "dict." + name + "()";
  if (name == "get") {
    args.check(what, 2, {});
    const Value& key = arg(args, 0, "key", what);
    const Value* dflt = args.get(1, "default");
    if (key.is_string())
      if (const Value* v = d.dict_ref().find(key.as_string())) return *v;
    return dflt ? *dflt : Value::none();
  }
  args.check(what, 0, {});
  List out;
  for (const auto& [k, v] : d.dict_ref().entries) {
    if (name == "items")
      out.push_back(Value::tuple({Value(k), v}));
    else if (name == "keys")
      out.emplace_back(k);
    else
      out.push_back(v);
  }
  return Value::list(std::move(out));
}

}  // namespace

bool is_test(const std::string& name) { return contains(kTests, name); }
bool is_method(const std::string& name) { return contains(kStrMethods, name) || contains(kDictMethods, name); }
bool is_global_function(const std::string& name) { return contains(kGlobals, name); }
std::string known_tests() { return join_names(kTests); }

Value call_method(const Value& obj, const std::string& name, const Args& args) {
  if (obj.is_undefined()) undefined_error(obj);
  if (obj.is_string() && contains(kStrMethods, name)) return string_method(obj.as_string(), name, args);
  if (obj.is_mapping() && contains(kDictMethods, name)) return dict_method(obj, name, args);
  Value attr = get_attr(obj, name);
  if (attr.kind() == Value::Kind::Callable) return attr.function()(args);
  throw EvalError("'" + type_name(obj) + "' object has no method '" + name + "'",
                  "str and dict methods are supported");
}

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Dict:
      if (contains(kDictMethods, name)) return bound_method(obj, name);
      [[fallthrough]];
    case Value::Kind::Namespace:
      if (const Value* v = obj.dict_ref().find(name)) return *v;
      break;
    case Value::Kind::String:
      if (contains(kStrMethods, name)) return bound_method(obj, name);
      break;
    default: break;
  }
  return Value::undefined(name);
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) undefined_error(obj);
  if (obj.is_mapping() && key.is_string()) {
    if (const Value* v = obj.dict_ref().find(key.as_string())) return *v;
  } else if ((obj.is_sequence() || obj.is_string()) &&
             (key.kind() == Value::Kind::Int || key.kind() == Value::Kind::Bool)) {
    int64_t i = key.as_int();
    if (obj.is_string()) {
      std::u32string u = ustr::decode(obj.as_string());
      int64_t n = static_cast<int64_t>(u.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value(ustr::encode(u.substr(i, 1)));
    } else {
      int64_t n = static_cast<int64_t>(obj.items().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.items()[i];
    }
  }
  // Jinja falls back to attribute lookup for string keys; anything else is Undefined.
  if (key.is_string()) return get_attr(obj, key.as_string());
  return Value::undefined(repr(key));
}

bool apply_test(const std::string& name, const Value& v, const Args& args) {
  using K = Value::Kind;
  const std::string what = "test '" + name + "'";
  auto other = [&]() -> const Value& { return arg(args, 0, "other", what); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "mapping") return v.is_mapping();
  if (name == "iterable")
    return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_mapping();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind() == K::Int;
  if (name == "float") return v.kind() == K::Float;
  if (name == "sequence") return v.is_string() || v.is_sequence() || v.is_mapping();
  if (name == "true") return v.kind() == K::Bool && v.as_bool();
  if (name == "false") return v.kind() == K::Bool && !v.as_bool();
  if (name == "boolean") return v.kind() == K::Bool;
  if (name == "equalto" || name == "eq" || name == "==") return equals(v, other());
  if (name == "ne" || name == "!=") return !equals(v, other());
  if (name == "lt" || name == "<") return less(v, other());
  if (name == "le" || name == "<=") return !less(other(), v);
  if (name == "gt" || name == ">") return less(other(), v);
  if (name == "ge" || name == ">=") return !less(v, other());
  if (name == "sameas") {
    const Value& o = other();
    if (v.identity() || o.identity()) return v.identity() == o.identity();
    return v.kind() == o.kind() && (v.is_none() || v.is_undefined() || equals(v, o));
  }
  if (name == "lower" || name == "upper") {
    if (!v.is_string()) return false;
    const std::string& s = v.as_string();
    bool cased = ustr::upper(s) != ustr::lower(s);
    return cased && (name == "lower" ? ustr::lower(s) == s : ustr::upper(s) == s);
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (v.kind() != K::Int && v.kind() != K::Bool) throw EvalError(what + " needs an integer, got " + type_name(v));
    int64_t d = 2;
    if (name == "divisibleby") {
      const Value& num = arg(args, 0, "num", what);
      if (num.kind() != K::Int || num.as_int() == 0) throw EvalError(what + " needs a non-zero integer divisor");
      d = num.as_int();
    }
    bool divisible = v.as_int() % d == 0;
    return name == "odd" ? !divisible : divisible;
  }
  if (name == "in") {
    const Value& seq = arg(args, 0, "seq", what);
    if (seq.is_string()) {
      if (!v.is_string()) throw EvalError("'in <string>' requires string as left operand, not " + type_name(v));
      return seq.as_string().find(v.as_string()) != std::string::npos;
    }
    if (seq.is_mapping()) return v.is_string() && seq.dict_ref().find(v.as_string()) != nullptr;
    for (const Value& x : iterate(seq, what))
      if (equals(x, v)) return true;
    return false;
  }
  throw EvalError("unsupported test '" + name + "'", "known tests: " + known_tests());
}

Value make_globals() {
  Value g = Value::dict();
  Dict& d = g.dict_ref();
  d.set("raise_exception", Value::callable("raise_exception", [](const Args& a) -> Value {
          const Value* m = a.get(0, "message");
          throw RaisedError(m ? to_str(*m) : "");
        }));
  d.set("strftime_now", Value::callable("strftime_now", [](const Args& a) -> Value {
          a.check("strftime_now()", 1, {});
          std::string fmt = string_arg(a, 0, "format", "strftime_now()");
          std::time_t now = std::time(nullptr);
          std::tm local{};
          localtime_r(&now, &local);
          // Python's datetime.strftime defers to the C library's strftime on Linux.
          for (size_t cap = 256; cap <= (1u << 20); cap *= 4) {
            std::string buf(cap, '\0');
            size_t n = std::strftime(buf.data(), cap, fmt.c_str(), &local);
            if (n > 0 || fmt.empty()) return Value(buf.substr(0, n));
          }
          return Value(std::string());
        }));
  d.set("range", Value::callable("range", [](const Args& a) -> Value {
          a.check("range()", 3, {});
          const std::string what = "range()";
          if (a.positional.empty()) throw EvalError("range expected at least 1 argument, got 0");
          int64_t start = 0, stop, step = 1;
          if (a.positional.size() == 1) {
            stop = int_arg(a, 0, "stop", 0, what);
          } else {
            start = int_arg(a, 0, "start", 0, what);
            stop = int_arg(a, 1, "stop", 0, what);
            step = int_arg(a, 2, "step", 1, what);
          }
          if (step == 0) throw EvalError("range() arg 3 must not be zero");
          List out;
          for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
            // Jinja's sandbox caps ranges at 100000 items (MAX_RANGE).
            if (out.size() >= 100000) throw EvalError("range too big, the sandbox allows 100000 items");
            out.emplace_back(i);
          }
          return Value::list(std::move(out));
        }));
  d.set("namespace", Value::callable("namespace", [](const Args& a) -> Value {
          Value ns = Value::namespace_();
          if (a.positional.size() > 1) throw EvalError("namespace() takes at most one positional argument (a dict)");
          if (!a.positional.empty()) {
            if (!a.positional[0].is_mapping()) throw EvalError("namespace() positional argument must be a dict");
            for (const auto& [k, v] : a.positional[0].dict_ref().entries) ns.dict_ref().set(k, v);
          }
          for (const auto& [k, v] : a.keyword) ns.dict_ref().set(k, v);
          for (const auto& [k, v] : ns.dict_ref().entries)
            if (!k.empty() && k[0] == '_')
              throw EvalError("chat templates cannot store underscore-prefixed attributes on a namespace, got '" + k + "'");
          return ns;
        }));
  d.set("dict", Value::callable("dict", [](const Args& a) -> Value {
          Value out = Value::dict();
          if (a.positional.size() > 1) throw EvalError("dict() takes at most one positional argument");
          if (!a.positional.empty()) {
            if (!a.positional[0].is_mapping()) throw EvalError("dict() positional argument must be a dict");
            for (const auto& [k, v] : a.positional[0].dict_ref().entries) out.dict_ref().set(k, v);
          }
          for (const auto& [k, v] : a.keyword) out.dict_ref().set(k, v);
          return out;
        }));
  return g;
}

}  // namespace llmtune::tokenizer::jinja
