// The values a chat template computes with: Python's None/bool/int/float/str/list/tuple/dict as
// Jinja sees them, plus Jinja's Undefined, namespaces and callables. Lists and dicts are shared
// by reference like Python objects; printing, equality and truthiness follow Python.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::tokenizer::jinja {

// A failure while evaluating; the evaluator adds the template line and turns it into a
// TemplateError. `hint` says what to do about it.
struct EvalError : std::runtime_error {
  EvalError(const std::string& what, std::string hint_ = "")
      : std::runtime_error(what), hint(std::move(hint_)) {}
  std::string hint;
};

class Value;
using List = std::vector<Value>;
struct Dict;
struct Args;
using Function = std::function<Value(const Args&)>;

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Callable };

  Value() = default;  // Undefined
  static Value undefined(std::string name) {
    Value v;
    v.str_ = std::move(name);
    return v;
  }
  static Value none() { return Value(Kind::None); }
  Value(bool b) : kind_(Kind::Bool), int_(b) {}
  Value(int i) : kind_(Kind::Int), int_(i) {}
  Value(int64_t i) : kind_(Kind::Int), int_(i) {}
  Value(double d) : kind_(Kind::Float), float_(d) {}
  Value(std::string s) : kind_(Kind::String), str_(std::move(s)) {}
  Value(const char* s) : kind_(Kind::String), str_(s) {}
  static Value list(List items = {});
  static Value tuple(List items);
  static Value dict();
  static Value namespace_();
  static Value callable(std::string name, Function fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_sequence() const { return kind_ == Kind::List || kind_ == Kind::Tuple; }
  bool is_mapping() const { return kind_ == Kind::Dict; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }  // Bool and Int
  double as_float() const { return kind_ == Kind::Float ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return str_; }
  const std::string& undefined_name() const { return str_; }
  List& items() const { return *list_; }
  Dict& dict_ref() const { return *dict_; }  // Dict and Namespace
  const Function& function() const { return *fn_; }
  const std::string& callable_name() const { return str_; }

  // Python truthiness; Undefined is false.
  bool truthy() const;
  // Identity of shared containers (namespaces compare by identity, like Python objects).
  const void* identity() const;

  static Value from_json(const nlohmann::ordered_json& j, int depth = 0);

 private:
  explicit Value(Kind k) : kind_(k) {}
  Kind kind_ = Kind::Undefined;
  int64_t int_ = 0;
  double float_ = 0;
  std::string str_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

// An insertion-ordered dict with string keys (what JSON and the chat templates use).
struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);
};

// Arguments of a call, filter or test: positional then keyword.
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  // The argument at `index` or named `name`, or Undefined when absent.
  const Value* get(size_t index, const std::string& name) const;
  // Rejects positional arguments past `max_positional` and keywords outside `names`.
  void check(const std::string& what, size_t max_positional, const std::vector<std::string>& names) const;
};

// Deepest nesting of lists/dicts the engine converts or prints, so hostile input cannot
// exhaust the stack.
constexpr int kMaxDepth = 512;

// str(v) as Jinja prints it ({{ v }}): None -> "None", lists/dicts as Python repr, Undefined -> "".
std::string to_str(const Value& v);
// repr(v) as Python writes it.
std::string repr(const Value& v, int depth = 0);
// Python float repr (shortest round-trip): 1.0, 0.1, 1e+16.
std::string float_repr(double d);
// Python's == and < (raising EvalError where Python raises TypeError).
bool equals(const Value& a, const Value& b);
bool less(const Value& a, const Value& b);
// Python's type name, for error messages.
std::string type_name(const Value& v);
// json.dumps(v, ensure_ascii=False, indent, separators, sort_keys) as HF's tojson filter calls it.
// indent: empty optional means None; `indent_str` is the unit of indentation.
struct JsonFormat {
  bool pretty = false;
  std::string indent_str;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonFormat& fmt, int depth = 0);
// Iterates like Python's iter(): strings by code point, dicts by key; Undefined is empty.
List iterate(const Value& v, const std::string& what);

}  // namespace llmtune::tokenizer::jinja
