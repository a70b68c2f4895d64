// Value semantics after Python: truthiness, ==, <, str(), repr(), iteration, and json.dumps as
// HF's tojson filter calls it (ensure_ascii=False, key order kept).
#include "value.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "ustring.h"

namespace llmtune::tokenizer::jinja {

Value Value::list(List items) {
  Value v(Kind::List);
  v.list_ = std::make_shared<List>(std::move(items));
  return v;
}

Value Value::tuple(List items) {
  Value v = list(std::move(items));
  v.kind_ = Kind::Tuple;
  return v;
}

Value Value::dict() {
  Value v(Kind::Dict);
  v.dict_ = std::make_shared<Dict>();
  return v;
}

Value Value::namespace_() {
  Value v(Kind::Namespace);
  v.dict_ = std::make_shared<Dict>();
  return v;
}

Value Value::callable(std::string name, Function fn) {
  Value v(Kind::Callable);
  v.str_ = std::move(name);
  v.fn_ = std::make_shared<Function>(std::move(fn));
  return v;
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool:
    case Kind::Int: return int_ != 0;
    case Kind::Float: return float_ != 0.0;
    case Kind::String: return !str_.empty();
    case Kind::List:
    case Kind::Tuple: return !list_->empty();
    case Kind::Dict: return !dict_->entries.empty();
    default: return true;
  }
}

const void* Value::identity() const {
  if (list_) return list_.get();
  if (dict_) return dict_.get();
  if (fn_) return fn_.get();
  return nullptr;
}

Value Value::from_json(const nlohmann::ordered_json& j, int depth) {
  if (depth > kMaxDepth) throw EvalError("context nested deeper than " + std::to_string(kMaxDepth) + " levels");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return none();
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: return Value(static_cast<int64_t>(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json(e, depth + 1));
      return list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Value d = dict();
      for (auto it = j.begin(); it != j.end(); ++it) d.dict_->set(it.key(), from_json(it.value(), depth + 1));
      return d;
    }
    default: throw EvalError("context holds a binary JSON value", "pass strings, numbers, lists and objects");
  }
}

const Value* Dict::find(const std::string& key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : entries)
    if (k == key) {
      old = std::move(v);
      return;
    }
  entries.emplace_back(key, std::move(v));
}

const Value* Args::get(size_t index, const std::string& name) const {
  for (const auto& [k, v] : keyword)
    if (k == name) return &v;
  return index < positional.size() ? &positional[index] : nullptr;
}

void Args::check(const std::string& what, size_t max_positional, const std::vector<std::string>& names) const {
  if (positional.size() > max_positional)
    throw EvalError(what + " takes at most " + std::to_string(max_positional) + " positional arguments, got " +
                    std::to_string(positional.size()));
  for (const auto& [k, v] : keyword)
    if (std::find(names.begin(), names.end(), k) == names.end())
      throw EvalError(what + " got an unexpected keyword argument '" + k + "'");
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t epos = s.find('e');
  int exp = std::atoi(s.c_str() + epos + 1);
  std::string digits;
  for (size_t i = 0; i < epos; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int n = static_cast<int>(digits.size());
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  } else if (exp >= 0) {
    if (n <= exp + 1)
      out = digits + std::string(exp + 1 - n, '0') + ".0";
    else
      out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
  } else {
    out = "0." + std::string(-exp - 1, '0') + digits;
  }
  return (neg ? "-" : "") + out;
}

namespace {

// Characters Python's repr() prints as escapes (str.isprintable() is false): controls, and the
// separators/format characters that matter in practice.
bool repr_escapes(char32_t c) {
  return c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD || c == 0x1680 || (c >= 0x2000 && c <= 0x200F) ||
         (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF ||
         (c >= 0xD800 && c <= 0xDFFF) || (c >= 0xFFF9 && c <= 0xFFFB);
}

std::string string_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : ustr::decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (repr_escapes(c)) {
      char buf[16];
      if (c < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      else
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      ustr::append_utf8(out, c);
    }
  }
  out += q;
  return out;
}

void check_depth(int depth) {
  if (depth > kMaxDepth) throw EvalError("value nested deeper than " + std::to_string(kMaxDepth) + " levels");
}

}  // namespace

std::string repr(const Value& v, int depth) {
  check_depth(depth);
  switch (v.kind()) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.as_bool() ? "True" : "False";
    case Value::Kind::Int: return std::to_string(v.as_int());
    case Value::Kind::Float: return float_repr(v.as_float());
    case Value::Kind::String: return string_repr(v.as_string());
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      bool tuple = v.kind() == Value::Kind::Tuple;
      std::string out = tuple ? "(" : "[";
      const List& items = v.items();
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ", ";
        out += repr(items[i], depth + 1);
      }
      if (tuple && items.size() == 1) out += ",";
      return out + (tuple ? ")" : "]");
    }
    case Value::Kind::Dict:
    case Value::Kind::Namespace: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, e] : v.dict_ref().entries) {
        if (!first) out += ", ";
        first = false;
        out += string_repr(k) + ": " + repr(e, depth + 1);
      }
      out += "}";
      return v.kind() == Value::Kind::Namespace ? "<Namespace " + out + ">" : out;
    }
    case Value::Kind::Callable: return "<built-in function " + v.callable_name() + ">";
  }
  return "";
}

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::String: return v.as_string();
    default: return repr(v);
  }
}

std::string type_name(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return "Undefined";
    case Value::Kind::None: return "NoneType";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "str";
    case Value::Kind::List: return "list";
    case Value::Kind::Tuple: return "tuple";
    case Value::Kind::Dict: return "dict";
    case Value::Kind::Namespace: return "Namespace";
    case Value::Kind::Callable: return "builtin_function_or_method";
  }
  return "object";
}

bool equals(const Value& a, const Value& b) {
  using K = Value::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.kind() != K::Float && b.kind() != K::Float) return a.as_int() == b.as_int();
    return a.as_float() == b.as_float();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case K::Undefined:
    case K::None: return true;
    case K::String: return a.as_string() == b.as_string();
    case K::List:
    case K::Tuple: {
      const List &x = a.items(), &y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals(x[i], y[i])) return false;
      return true;
    }
    case K::Dict: {
      const auto &x = a.dict_ref().entries, &y = b.dict_ref().entries;
      if (x.size() != y.size()) return false;
      for (const auto& [k, v] : x) {
        const Value* other = b.dict_ref().find(k);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    default: return a.identity() == b.identity();
  }
}

bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() != Value::Kind::Float && b.kind() != Value::Kind::Float) return a.as_int() < b.as_int();
    return a.as_float() < b.as_float();
  }
  if (a.is_string() && b.is_string()) return a.as_string() < b.as_string();  // UTF-8 order = code point order
  if (a.kind() == b.kind() && a.is_sequence()) {
    const List &x = a.items(), &y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return less(x[i], y[i]);
    }
    return x.size() < y.size();
  }
  throw EvalError("'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

namespace {

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace

std::string to_json(const Value& v, const JsonFormat& fmt, int depth) {
  check_depth(depth);
  auto newline = [&](int level) {
    std::string s = "\n";
    for (int i = 0; i < level; ++i) s += fmt.indent_str;
    return s;
  };
  switch (v.kind()) {
    case Value::Kind::None: return "null";
    case Value::Kind::Bool: return v.as_bool() ? "true" : "false";
    case Value::Kind::Int: return std::to_string(v.as_int());
    case Value::Kind::Float: {
      double d = v.as_float();
      if (std::isnan(d)) return "NaN";
      if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
      return float_repr(d);
    }
    case Value::Kind::String: return json_string(v.as_string());
    case Value::Kind::List:
    case Value::Kind::Tuple: {
      const List& items = v.items();
      if (items.empty()) return "[]";
      std::string out = "[";
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += fmt.item_sep;
        if (fmt.pretty) out += newline(depth + 1);
        out += to_json(items[i], fmt, depth + 1);
      }
      if (fmt.pretty) out += newline(depth);
      return out + "]";
    }
    case Value::Kind::Dict: {
      auto entries = v.dict_ref().entries;
      if (entries.empty()) return "{}";
      if (fmt.sort_keys)
        std::stable_sort(entries.begin(), entries.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
      std::string out = "{";
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += fmt.item_sep;
        if (fmt.pretty) out += newline(depth + 1);
        out += json_string(entries[i].first) + fmt.key_sep + to_json(entries[i].second, fmt, depth + 1);
      }
      if (fmt.pretty) out += newline(depth);
      return out + "}";
    }
    default:
      throw EvalError("Object of type " + type_name(v) + " is not JSON serializable",
                      "tojson takes strings, numbers, booleans, none, lists and dicts");
  }
}

List iterate(const Value& v, const std::string& what) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List:
    case Value::Kind::Tuple: return v.items();
    case Value::Kind::Dict: {
      List keys;
      for (const auto& [k, e] : v.dict_ref().entries) keys.emplace_back(k);
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      std::string one;
      for (char32_t c : ustr::decode(v.as_string())) {
        one.clear();
        ustr::append_utf8(one, c);
        chars.emplace_back(one);
      }
      return chars;
    }
    default: throw EvalError("'" + type_name(v) + "' object is not iterable", what);
  }
}

}  // namespace llmtune::tokenizer::jinja
