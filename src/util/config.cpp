// YAML + key=value + flags → a validated, typed Config. Problems are collected, not thrown one by
// one, so a user fixes a config in one pass.
#include "llmtune/util/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cstdint>
#include <cmath>
#include <optional>
#include <set>
#include <sstream>

#include "config_yaml.h"
#include "llmtune/util/error.h"

namespace llmtune::config {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string format_double(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string s(buf, end);
  // Keep floats recognisable as floats when read back ("1" would read as an integer).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

// Converts one scalar text to the key's type, or returns an error text.
std::variant<Value, std::string> convert_scalar(const Key& key, const std::string& text) {
  auto expected = [&] {
    return "expects " + std::string(type_name(key.type)) + ", got '" + text + "'";
  };
  switch (key.type) {
    case Type::Bool: {
      std::string t = lower(text);
      if (t == "true" || t == "yes" || t == "on") return Value{true};
      if (t == "false" || t == "no" || t == "off") return Value{false};
      return expected();
    }
    case Type::Int: {
      int64_t v = 0;
      const char* end = text.data() + text.size();
      auto [ptr, ec] = std::from_chars(text.data() + (text.starts_with('+') ? 1 : 0), end, v);
      // Never clamped: a number past int64 is refused with the range.
      if (ec == std::errc::result_out_of_range && ptr == end)
        return "expects an integer between " + std::to_string(INT64_MIN) + " and " + std::to_string(INT64_MAX) +
               ", got '" + text + "'";
      if (ec != std::errc() || ptr != end) return expected();
      return Value{v};
    }
    case Type::Float: {
      double v = 0;
      const char* end = text.data() + text.size();
      auto [ptr, ec] = std::from_chars(text.data() + (text.starts_with('+') ? 1 : 0), end, v);
      if (ec == std::errc::result_out_of_range && ptr == end)
        return "expects a finite number, got '" + text + "' (out of the range of a double)";
      if (ec != std::errc() || ptr != end || !std::isfinite(v)) return expected();
      return Value{v};
    }
    case Type::String:
      return Value{text};
    case Type::StringList:
      return Value{std::vector<std::string>{text}};
  }
  return expected();
}

// Converts a YAML node (scalar or sequence) to the key's type, or returns an error text.
std::variant<Value, std::string> convert_node(const Key& key, const YAML::Node& node) {
  if (node.IsScalar()) return convert_scalar(key, node.Scalar());
  if (node.IsSequence() && key.type == Type::StringList) {
    std::vector<std::string> items;
    for (const auto& item : node) {
      if (!item.IsScalar()) return std::string("expects a list of strings, got a nested structure");
      items.push_back(item.Scalar());
    }
    return Value{std::move(items)};
  }
  const char* got = node.IsSequence() ? "a list" : "a map";
  return "expects " + std::string(type_name(key.type)) + ", got " + got;
}

// A bound as users write it: "0", "1000000", "0.5".
std::string format_bound(double v) {
  if (std::abs(v) < 1e15 && v == std::floor(v)) return std::to_string(static_cast<int64_t>(v));
  return format_double(v);
}

// Range, choice and custom checks; returns an error text or "".
std::string validate(const Key& key, const Value& value) {
  if (key.type == Type::Int || key.type == Type::Float) {
    double v = key.type == Type::Int ? static_cast<double>(std::get<int64_t>(value)) : std::get<double>(value);
    if (key.min && (key.min_exclusive ? v <= *key.min : v < *key.min)) {
      return "must be " + std::string(key.min_exclusive ? "> " : ">= ") + format_bound(*key.min) +
             ", got " + format_value(value);
    }
    if (key.max && v > *key.max) {
      return "must be <= " + format_bound(*key.max) + ", got " + format_value(value);
    }
  }
  if (!key.choices.empty()) {
    auto check_one = [&](const std::string& s) -> std::string {
      if (std::find(key.choices.begin(), key.choices.end(), s) != key.choices.end()) return "";
      std::string all;
      for (const auto& c : key.choices) all += (all.empty() ? "" : ", ") + c;
      return "'" + s + "' is not one of: " + all;
    };
    if (key.type == Type::String) {
      if (auto e = check_one(std::get<std::string>(value)); !e.empty()) return e;
    } else if (key.type == Type::StringList) {
      for (const auto& s : std::get<std::vector<std::string>>(value))
        if (auto e = check_one(s); !e.empty()) return e;
    }
  }
  if (key.check) return key.check(value);
  return "";
}

}  // namespace

std::string format_value(const Value& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, int64_t>) return std::to_string(v);
        else if constexpr (std::is_same_v<T, double>) return format_double(v);
        else if constexpr (std::is_same_v<T, std::string>) return v;
        else {
          std::string out = "[";
          for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
          return out + "]";
        }
      },
      value);
}

std::string Origin::describe() const {
  switch (kind) {
    case Kind::Default: return "default";
    case Kind::File: return source + ":" + std::to_string(line);
    case Kind::Override: return "command line '" + source + "'";
    case Kind::Flag: return "flag " + source;
  }
  return source;
}

std::optional<std::pair<std::string, std::string>> split_override(std::string_view arg) {
  auto eq = arg.find('=');
  if (eq == std::string_view::npos || eq == 0) return std::nullopt;
  return std::pair{std::string(arg.substr(0, eq)), std::string(arg.substr(eq + 1))};
}

namespace {

// Collects the values of one source into the config entries, and the problems found on the way.
class Filler {
 public:
  Filler(const Schema& schema, std::map<std::string, std::optional<Value>, std::less<>>& values,
         std::map<std::string, Origin, std::less<>>& origins, std::vector<std::string>& errors)
      : schema_(schema), values_(values), origins_(origins), errors_(errors) {}

  void error(const Origin& where, const std::string& message) {
    errors_.push_back(where.describe() + ": " + message);
  }

  void unknown_key(const Origin& where, const std::string& name, bool is_map) {
    std::string hint = schema_.suggest(name);
    if (!hint.empty()) reported_.insert(hint);
    std::string msg = "unknown " + std::string(is_map ? "section" : "key") + " '" + name + "'";
    msg += hint.empty() ? " (llmtune <command> --print-config lists the valid keys)" : " (did you mean '" + hint + "'?)";
    error(where, msg);
  }

  void set(const Key& key, const Origin& where, std::variant<Value, std::string> converted) {
    if (auto* msg = std::get_if<std::string>(&converted)) {
      error(where, "key '" + key.name + "' " + *msg);
      reported_.insert(key.name);
      return;
    }
    Value& v = std::get<Value>(converted);
    if (auto msg = validate(key, v); !msg.empty()) {
      error(where, "key '" + key.name + "' " + msg);
      reported_.insert(key.name);
      return;
    }
    values_[key.name] = std::move(v);
    origins_[key.name] = where;
  }

  void unset(const Key& key, const Origin& where) {
    values_[key.name] = key.default_value;
    origins_[key.name] = where;
  }

  // Walks one YAML map, flattening nested maps into dotted keys.
  void fill_map(const YAML::Node& map, const std::string& prefix, const std::string& file) {
    std::set<std::string> seen;
    for (const auto& item : map) {
      Origin where{Origin::Kind::File, file, item.first.Mark().line + 1};
      if (!item.first.IsScalar()) {
        error(where, "keys must be plain names");
        continue;
      }
      std::string name = prefix + item.first.Scalar();
      if (!seen.insert(name).second) {
        error(where, "duplicate key '" + name + "'");
        continue;
      }
      const YAML::Node& node = item.second;
      const Key* key = schema_.find(name);
      if (!key) {
        if (node.IsMap() && schema_.is_section(name)) {
          fill_map(node, name + ".", file);
        } else if (schema_.is_section(name)) {
          error(where, "'" + name + "' is a section; give its keys as a map (e.g. " + name + ":\\n  key: value)");
        } else {
          unknown_key(where, name, node.IsMap());
        }
        continue;
      }
      if (node.IsNull()) {  // "key:", "key: null", "key: ~" restore the default
        unset(*key, where);
      } else {
        set(*key, where, convert_node(*key, node));
      }
    }
  }

  // Keys an error already named, or pointed at as the likely intent of an unknown key: a typo or a
  // bad value of a required key is one error, not two with "missing required key".
  bool already_reported(const std::string& name) const { return reported_.count(name) > 0; }

  // One "key=value" from the command line or one flag.
  void fill_one(const std::string& name, const std::string& text, const Origin& where) {
    const Key* key = schema_.find(name);
    if (!key) {
      unknown_key(where, name, false);
      return;
    }
    // `--prompt ''` is an empty string; `key=`, `key=null` restore the default.
    if (where.kind == Origin::Kind::Flag && text.empty() && key->type == Type::String) {
      if (key->required) {
        error(where, "key '" + name + "' needs a value, got an empty string");
        reported_.insert(name);
      }
      else set(*key, where, Value{text});
      return;
    }
    if (text.empty() || text == "null" || text == "~") {
      unset(*key, where);
      return;
    }
    if (key->type == Type::StringList) {
      // Lists are written in YAML flow style: key=[a, b]; a bare value is a one-item list.
      try {
        set(*key, where, convert_node(*key, YAML::Load(text)));
      } catch (const YAML::Exception& e) {
        error(where, "key '" + name + "': cannot parse '" + text + "' as a list (" + e.msg + "); write key=[a, b]");
      }
      return;
    }
    set(*key, where, convert_scalar(*key, text));
  }

 private:
  const Schema& schema_;
  std::map<std::string, std::optional<Value>, std::less<>>& values_;
  std::map<std::string, Origin, std::less<>>& origins_;
  std::vector<std::string>& errors_;
  std::set<std::string> reported_;
};

}  // namespace

Config Config::resolve(const Schema& schema, const Sources& sources) {
  std::map<std::string, std::optional<Value>, std::less<>> values;
  std::map<std::string, Origin, std::less<>> origins;
  std::vector<std::string> errors;
  for (const auto& k : schema.keys()) {
    values[k.name] = k.default_value;
    origins[k.name] = Origin{};
  }
  Filler filler(schema, values, origins, errors);

  // A file that cannot be read as one map of keys reports that alone: its keys are unknown, so
  // "missing required key" lines after it would be false.
  bool file_unreadable = false;
  if (sources.file || sources.yaml_text) {
    std::string name = sources.file ? sources.file->string() : "<config>";
    std::string text = sources.yaml_text ? *sources.yaml_text : read_text_file(*sources.file);
    std::variant<YAML::Node, YamlProblem> root = load_config_yaml(text);
    if (const auto* problem = std::get_if<YamlProblem>(&root)) {
      file_unreadable = true;
      errors.push_back(name + ":" + std::to_string(problem->line) + problem->message);
    } else if (std::get<YAML::Node>(root).IsMap()) {
      filler.fill_map(std::get<YAML::Node>(root), "", name);
    }
  }

  for (const auto& arg : sources.overrides) {
    Origin where{Origin::Kind::Override, arg, 0};
    auto kv = split_override(arg);
    if (!kv) {
      filler.error(where, "expected key=value");
      continue;
    }
    filler.fill_one(kv->first, kv->second, where);
  }
  for (const auto& f : sources.flags) {
    std::string spelled = f.flag;
    if (spelled.empty()) {
      spelled = "--" + f.key;
      std::replace(spelled.begin(), spelled.end(), '_', '-');
    }
    filler.fill_one(f.key, f.value, Origin{Origin::Kind::Flag, spelled, 0});
  }

  for (const auto& k : schema.keys()) {
    if (file_unreadable || filler.already_reported(k.name)) continue;
    if (k.required && !values[k.name]) {
      errors.push_back("missing required key '" + k.name +
                       "': set it in the config file or as " + k.name + "=VALUE");
    }
  }
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "\n") + e;
    throw ConfigError(all);
  }

  Config cfg;
  cfg.schema_ = schema;
  for (const auto& k : schema.keys()) cfg.entries_[k.name] = Entry{values[k.name], origins[k.name]};
  return cfg;
}

const Config::Entry& Config::entry(std::string_view key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) throw std::logic_error("config: no key '" + std::string(key) + "' in the schema");
  return it->second;
}

bool Config::has(std::string_view key) const { return entry(key).value.has_value(); }

const Value& Config::value(std::string_view key) const {
  const Entry& e = entry(key);
  if (!e.value) throw ConfigError("config key '" + std::string(key) + "' is not set: set it in the config file or as " + std::string(key) + "=VALUE");
  return *e.value;
}

const Origin& Config::origin(std::string_view key) const { return entry(key).origin; }

bool Config::get_bool(std::string_view key) const { return std::get<bool>(value(key)); }
int64_t Config::get_int(std::string_view key) const { return std::get<int64_t>(value(key)); }
double Config::get_float(std::string_view key) const { return std::get<double>(value(key)); }
const std::string& Config::get_string(std::string_view key) const { return std::get<std::string>(value(key)); }
const std::vector<std::string>& Config::get_list(std::string_view key) const {
  return std::get<std::vector<std::string>>(value(key));
}

std::string Config::to_yaml(bool with_origins) const {
  // Nest dotted keys into maps, keeping schema order (yaml-cpp keeps insertion order).
  YAML::Node root(YAML::NodeType::Map);
  for (const auto& k : schema_.keys()) {
    const Entry& e = entries_.at(k.name);
    YAML::Node node;
    if (!e.value) {
      node = YAML::Node(YAML::NodeType::Null);
    } else if (auto* list = std::get_if<std::vector<std::string>>(&*e.value)) {
      node = YAML::Node(YAML::NodeType::Sequence);
      for (const auto& s : *list) node.push_back(s);
      node.SetStyle(YAML::EmitterStyle::Flow);
    } else if (auto* s = std::get_if<std::string>(&*e.value)) {
      node = *s;
    } else {
      node = format_value(*e.value);
    }
    std::vector<std::string> parts;
    std::stringstream ss(k.name);
    for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
    YAML::Node parent = root;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      if (!parent[parts[i]]) parent[parts[i]] = YAML::Node(YAML::NodeType::Map);
      parent.reset(parent[parts[i]]);
    }
    parent[parts.back()] = node;
  }
  YAML::Emitter out;
  out << root;
  std::string text = out.c_str();
  if (!with_origins) return text + "\n";

  // Annotate non-default values with where they came from, one comment per line.
  std::string annotated;
  std::stringstream lines(text);
  std::vector<std::string> path;
  for (std::string line; std::getline(lines, line);) {
    size_t indent = line.find_first_not_of(' ');
    size_t colon = line.find(':');
    std::string comment;
    if (indent != std::string::npos && colon != std::string::npos) {
      size_t depth = indent / 2;
      path.resize(depth);
      path.push_back(line.substr(indent, colon - indent));
      std::string name;
      for (const auto& p : path) name += (name.empty() ? "" : ".") + p;
      auto it = entries_.find(name);
      if (it != entries_.end() && it->second.origin.kind != Origin::Kind::Default)
        comment = "  # " + it->second.origin.describe();
    }
    annotated += line + comment + "\n";
  }
  return annotated;
}

}  // namespace llmtune::config
