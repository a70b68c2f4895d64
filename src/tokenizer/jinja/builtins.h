// Jinja's built-in filters, tests and globals, and the Python methods templates call on strings
// and dicts (str.strip, dict.items, ...), for the subset that chat templates use. Names outside
// these sets are rejected when the template is parsed.
#pragma once

#include <string>

#include "value.h"

namespace llmtune::tokenizer::jinja {

bool is_filter(const std::string& name);
bool is_test(const std::string& name);
bool is_method(const std::string& name);
bool is_global_function(const std::string& name);
// The names of each kind, for error hints.
std::string known_filters();
std::string known_tests();

Value apply_filter(const std::string& name, const Value& value, const Args& args);
bool apply_test(const std::string& name, const Value& value, const Args& args);
// obj.name(args) for the supported str and dict methods.
Value call_method(const Value& obj, const std::string& name, const Args& args);

// obj.name and obj[key] as Jinja's sandboxed environment resolves them: attribute access falls
// back to items and item access to attributes; a missing one is Undefined; access on Undefined
// raises "'x' is undefined".
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);

// The globals HF's environment defines: raise_exception, strftime_now, range, namespace, dict.
Value make_globals();

// Thrown by raise_exception(msg): the template's own message.
struct RaisedError : EvalError {
  explicit RaisedError(const std::string& m) : EvalError(m) {}
};

}  // namespace llmtune::tokenizer::jinja
