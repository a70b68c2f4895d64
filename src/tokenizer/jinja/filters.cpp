// Jinja's built-in filters (jinja2/filters.py) for the subset chat templates use, with HF's
// tojson override: json.dumps(x, ensure_ascii=False, indent, separators, sort_keys).
#include <algorithm>
#include <array>
#include <cmath>

#include "builtins.h"
#include "ustring.h"

namespace llmtune::tokenizer::jinja {
namespace {

const std::array<const char*, 28> kFilters = {
    "trim",  "length", "count",  "tojson",  "join",   "reject",     "select",  "selectattr", "rejectattr", "items",
    "first", "last",   "upper",  "lower",   "title",  "capitalize", "replace", "string",     "int",        "float",
    "default", "d",    "map",    "list",    "unique", "abs",        "reverse", "safe"};

// Jinja's soft_str: the filter input as a string (Undefined -> "").
std::string text(const Value& v) { return to_str(v); }

// attribute="a.b.0" as Jinja's make_attrgetter resolves it: item lookups, integer parts as indices.
Value attribute_of(const Value& item, const std::string& path) {
  Value cur = item;
  size_t b = 0;
  while (true) {
    size_t e = path.find('.', b);
    std::string part = path.substr(b, e == std::string::npos ? std::string::npos : e - b);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = digits ? get_item(cur, Value(static_cast<int64_t>(std::stoll(part)))) : get_item(cur, Value(part));
    if (e == std::string::npos) return cur;
    b = e + 1;
  }
}

Args tail_args(const Args& args, size_t from) {
  Args rest;
  for (size_t i = from; i < args.positional.size(); ++i) rest.positional.push_back(args.positional[i]);
  rest.keyword = args.keyword;
  return rest;
}

// select/reject/selectattr/rejectattr: keeps items whose test result equals `keep`.
Value select_like(const Value& seq, const Args& args, bool keep, bool by_attr, const std::string& what) {
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    const Value* a = args.get(0, "attribute");
    if (!a || !a->is_string()) throw EvalError(what + " needs an attribute name");
    attr = a->as_string();
    next = 1;
  }
  std::string test;
  if (args.positional.size() > next) {
    if (!args.positional[next].is_string()) throw EvalError(what + " expects a test name string");
    test = args.positional[next].as_string();
    if (!is_test(test)) throw EvalError("unsupported test '" + test + "' in " + what, "known tests: " + known_tests());
  }
  Args test_args = tail_args(args, next + 1);
  test_args.keyword.clear();
  List out;
  for (const Value& item : iterate(seq, what)) {
    Value subject = by_attr ? attribute_of(item, attr) : item;
    bool r = test.empty() ? subject.truthy() : apply_test(test, subject, test_args);
    if (r == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value to_json_filter(const Value& v, const Args& args) {
  args.check("tojson", 0, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonFormat fmt;
  if (const Value* ea = args.get(99, "ensure_ascii"); ea && ea->truthy())
    throw EvalError("tojson(ensure_ascii=True) is not supported", "HF renders with ensure_ascii=False");
  if (const Value* ind = args.get(99, "indent"); ind && !ind->is_none()) {
    fmt.pretty = true;
    // The indent repeats on every line at every depth, so its length is bounded before anything
    // is built (real templates indent by 2 or 4).
    constexpr int64_t kMaxIndent = 1024;
    if (ind->is_string() && static_cast<int64_t>(ind->as_string().size()) <= kMaxIndent)
      fmt.indent_str = ind->as_string();
    else if (ind->kind() == Value::Kind::Int && ind->as_int() <= kMaxIndent)
      fmt.indent_str = std::string(static_cast<size_t>(std::max<int64_t>(0, ind->as_int())), ' ');
    else if (ind->is_string() || ind->kind() == Value::Kind::Int)
      throw EvalError("tojson indent is longer than 1024 characters");
    else
      throw EvalError("tojson indent must be an integer or a string, got " + type_name(*ind));
    fmt.item_sep = ",";
  }
  if (const Value* sep = args.get(99, "separators"); sep && !sep->is_none()) {
    if (!sep->is_sequence() || sep->items().size() != 2 || !sep->items()[0].is_string() || !sep->items()[1].is_string())
      throw EvalError("tojson separators must be a pair of strings");
    fmt.item_sep = sep->items()[0].as_string();
    fmt.key_sep = sep->items()[1].as_string();
  }
  if (const Value* sk = args.get(99, "sort_keys")) fmt.sort_keys = sk->truthy();
  return Value(to_json(v, fmt));
}

// Jinja's title filter: capitalizes the first letter of each word, where words start after
// whitespace, '-', '(', '{', '[' or '<'.
std::string jinja_title(const std::string& s) {
  std::u32string u = ustr::decode(s);
  std::string out, word;
  auto is_sep = [](char32_t c) { return ustr::is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  size_t i = 0;
  while (i < u.size()) {
    size_t j = i;
    bool sep = is_sep(u[i]);
    while (j < u.size() && is_sep(u[j]) == sep) ++j;
    std::string piece = ustr::encode(u.substr(i, j - i));
    out += sep ? piece : ustr::capitalize(piece);
    i = j;
  }
  return out;
}

Value int_filter(const Value& v, const Args& args) {
  args.check("int", 2, {"default", "base"});
  const Value* dflt = args.get(0, "default");
  Value fallback = dflt ? *dflt : Value(0);
  switch (v.kind()) {
    case Value::Kind::Int:
    case Value::Kind::Bool: return Value(v.as_int());
    case Value::Kind::Float:
      if (!std::isfinite(v.as_float())) return fallback;
      return Value(static_cast<int64_t>(std::trunc(v.as_float())));
    case Value::Kind::String: {
      std::string s = ustr::strip(v.as_string(), std::nullopt, true, true);
      std::string digits;
      for (char c : s)
        if (c != '_') digits += c;
      char* end = nullptr;
      if (!digits.empty()) {
        long long i = std::strtoll(digits.c_str(), &end, 10);
        if (*end == '\0') return Value(static_cast<int64_t>(i));
        double d = std::strtod(digits.c_str(), &end);
        if (*end == '\0' && std::isfinite(d)) return Value(static_cast<int64_t>(std::trunc(d)));
      }
      return fallback;
    }
    default: return fallback;
  }
}

}  // namespace

bool is_filter(const std::string& name) {
  return std::any_of(kFilters.begin(), kFilters.end(), [&](const char* f) { return name == f; });
}

std::string known_filters() {
  std::string out;
  for (const char* f : kFilters) out += (out.empty() ? "" : ", ") + std::string(f);
  return out;
}

Value apply_filter(const std::string& name, const Value& v, const Args& args) {
  const std::string what = "filter '" + name + "'";
  if (name == "default" || name == "d") {
    args.check(what, 2, {"default_value", "boolean"});
    const Value* dflt = args.get(0, "default_value");
    const Value* boolean = args.get(1, "boolean");
    bool use_default = v.is_undefined() || (boolean && boolean->truthy() && !v.truthy());
    return use_default ? (dflt ? *dflt : Value(std::string())) : v;
  }
  if (name == "tojson") return to_json_filter(v, args);
  if (name == "items") {
    args.check(what, 0, {});
    if (v.is_undefined()) return Value::list();
    if (!v.is_mapping()) throw EvalError("Can only get item pairs from a mapping, got " + type_name(v));
    return call_method(v, "items", Args{});
  }
  if (name == "select" || name == "reject") return select_like(v, args, name == "select", false, what);
  if (name == "selectattr" || name == "rejectattr") return select_like(v, args, name == "selectattr", true, what);
  if (name == "map") {
    List out;
    const Value* attr = args.get(99, "attribute");
    if (attr) {
      args.check(what, 0, {"attribute", "default"});
      if (!attr->is_string()) throw EvalError("map(attribute=...) needs a string");
      const Value* dflt = args.get(99, "default");
      for (const Value& item : iterate(v, what)) {
        Value x = attribute_of(item, attr->as_string());
        out.push_back(x.is_undefined() && dflt ? *dflt : x);
      }
    } else {
      if (args.positional.empty() || !args.positional[0].is_string())
        throw EvalError("map needs a filter name or attribute=...", "e.g. map(attribute='name') or map('upper')");
      const std::string& f = args.positional[0].as_string();
      if (!is_filter(f)) throw EvalError("unsupported filter '" + f + "' in map", "known filters: " + known_filters());
      Args rest = tail_args(args, 1);
      for (const Value& item : iterate(v, what)) out.push_back(apply_filter(f, item, rest));
    }
    return Value::list(std::move(out));
  }
  if (name == "join") {
    args.check(what, 2, {"d", "attribute"});
    const Value* sep = args.get(0, "d");
    const Value* attr = args.get(1, "attribute");
    std::string out, s = sep ? text(*sep) : "";
    bool first = true;
    for (const Value& item : iterate(v, what)) {
      if (!first) out += s;
      first = false;
      out += text(attr ? attribute_of(item, text(*attr)) : item);
    }
    return Value(out);
  }
  if (name == "length" || name == "count") {
    args.check(what, 0, {});
    switch (v.kind()) {
      case Value::Kind::Undefined: return Value(0);
      case Value::Kind::String: return Value(static_cast<int64_t>(ustr::length(v.as_string())));
      case Value::Kind::List:
      case Value::Kind::Tuple: return Value(static_cast<int64_t>(v.items().size()));
      case Value::Kind::Dict: return Value(static_cast<int64_t>(v.dict_ref().entries.size()));
      default: throw EvalError("object of type '" + type_name(v) + "' has no len()");
    }
  }
  if (name == "first" || name == "last") {
    args.check(what, 0, {});
    if (v.is_undefined()) return Value::undefined("first");
    List items = iterate(v, what);
    if (items.empty()) return Value::undefined(name == "first" ? "No first item, sequence was empty." : "No last item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") {
    args.check(what, 0, {});
    return Value::list(iterate(v, what));
  }
  if (name == "reverse") {
    args.check(what, 0, {});
    if (v.is_string()) {
      std::u32string u = ustr::decode(v.as_string());
      std::reverse(u.begin(), u.end());
      return Value(ustr::encode(u));
    }
    List items = iterate(v, what);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "unique") {
    args.check(what, 2, {"case_sensitive", "attribute"});
    const Value* cs = args.get(0, "case_sensitive");
    const Value* attr = args.get(1, "attribute");
    bool case_sensitive = cs && cs->truthy();
    List out, seen;
    for (const Value& item : iterate(v, what)) {
      Value key = attr ? attribute_of(item, text(*attr)) : item;
      if (!case_sensitive && key.is_string()) key = Value(ustr::lower(key.as_string()));
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::list(std::move(out));
  }
  if (name == "abs") {
    args.check(what, 0, {});
    if (v.kind() == Value::Kind::Float) return Value(std::fabs(v.as_float()));
    if (v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool) return Value(v.as_int() < 0 ? -v.as_int() : v.as_int());
    throw EvalError("bad operand type for abs(): '" + type_name(v) + "'");
  }
  if (name == "int") return int_filter(v, args);
  if (name == "float") {
    args.check(what, 1, {"default"});
    const Value* dflt = args.get(0, "default");
    if (v.is_number()) return Value(v.as_float());
    if (v.is_string()) {
      std::string s = ustr::strip(v.as_string(), std::nullopt, true, true);
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && *end == '\0') return Value(d);
    }
    return dflt ? *dflt : Value(0.0);
  }
  if (name == "safe") {
    args.check(what, 0, {});
    return v;  // autoescape is off in HF's environment, so safe changes nothing
  }
  // The rest take the value as a string.
  std::string s = text(v);
  if (name == "trim") {
    args.check(what, 1, {"chars"});
    const Value* chars = args.get(0, "chars");
    std::optional<std::string> set;
    if (chars && !chars->is_none()) set = text(*chars);
    return Value(ustr::strip(s, set, true, true));
  }
  if (name == "string") {
    args.check(what, 0, {});
    return Value(s);
  }
  args.check(what, name == "replace" ? 3 : 0, {});
  if (name == "upper") return Value(ustr::upper(s));
  if (name == "lower") return Value(ustr::lower(s));
  if (name == "capitalize") return Value(ustr::capitalize(s));
  if (name == "title") return Value(jinja_title(s));
  if (name == "replace") {
    const Value* from = args.get(0, "old");
    const Value* to = args.get(1, "new");
    if (!from || !to) throw EvalError("replace needs the old and new strings");
    const Value* count = args.get(2, "count");
    int64_t n = count && !count->is_none() ? count->as_int() : -1;
    return Value(ustr::replace(s, text(*from), text(*to), n));
  }
  throw EvalError("unsupported filter '" + name + "'", "known filters: " + known_filters());
}

}  // namespace llmtune::tokenizer::jinja
