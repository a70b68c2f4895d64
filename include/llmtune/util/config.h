// Typed configuration: a schema of dotted keys with defaults and ranges, filled from built-in
// defaults < a YAML file < key=value overrides < explicit flags. Every problem in every source
// is collected and reported at once as one ConfigError (one line per problem, naming the file,
// line and key, with the nearest valid key suggested for typos).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace llmtune::config {

enum class Type { Bool, Int, Float, String, StringList };
std::string_view type_name(Type type);  // "a boolean", "an integer", ...

using Value = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;
std::string format_value(const Value& value);  // as it would be written in YAML

struct Key {
  std::string name;  // dotted: "train.lr"
  Type type = Type::String;
  std::optional<Value> default_value;  // none: unset unless given
  std::string help;
  bool required = false;
  std::optional<double> min;  // numbers: inclusive bounds
  std::optional<double> max;
  bool min_exclusive = false;
  std::vector<std::string> choices;  // strings: the allowed values
  // Further validation: returns an error text, or "" when the value is fine.
  std::function<std::string(const Value&)> check;
};

class Schema {
 public:
  // Adds a key; a duplicate name or a default of the wrong type is a programming error.
  Schema& add(Key key);
  const Key* find(std::string_view name) const;
  const std::vector<Key>& keys() const { return keys_; }
  // True when `prefix` names a section, i.e. some key starts with "prefix.".
  bool is_section(std::string_view prefix) const;
  // The valid key nearest to an unknown one, or "" when nothing is close.
  std::string suggest(std::string_view unknown) const;

 private:
  std::vector<Key> keys_;
};

// Where a value came from, for error messages and --print-config.
struct Origin {
  enum class Kind { Default, File, Override, Flag } kind = Kind::Default;
  std::string source;  // file path, "key=value" text, or flag name
  int line = 0;        // 1-based line in the file; 0 when not from a file
  std::string describe() const;
};

// A value given by a command-line flag: the key it sets, the text, and the flag as the user spells
// it ("--max-new-tokens" for max_new_tokens), for messages; "" spells it "--" + key with '-' for '_'.
// An empty text sets an empty string (`--prompt ''`); unlike `key=`, it does not restore the default.
struct FlagValue {
  std::string key, value, flag;
};

// Nesting deeper than this in a YAML config is refused (as io::kMaxJsonDepth for JSON).
inline constexpr int kMaxYamlDepth = 512;

struct Sources {
  std::optional<std::filesystem::path> file;  // the YAML config file (one document)
  std::optional<std::string> yaml_text;       // YAML given directly (tests); named by `file`
  std::vector<std::string> overrides;         // "key=value" arguments
  std::vector<FlagValue> flags;               // from explicit flags, the highest layer
};

class Config {
 public:
  // Fills and validates a config; throws ConfigError listing every problem found.
  static Config resolve(const Schema& schema, const Sources& sources);

  bool has(std::string_view key) const;
  const Value& value(std::string_view key) const;
  const Origin& origin(std::string_view key) const;

  bool get_bool(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;
  const std::string& get_string(std::string_view key) const;
  const std::vector<std::string>& get_list(std::string_view key) const;

  // The resolved config as YAML in schema order, non-default values annotated with their origin.
  std::string to_yaml(bool with_origins = true) const;

 private:
  struct Entry {
    std::optional<Value> value;
    Origin origin;
  };
  const Entry& entry(std::string_view key) const;

  Schema schema_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// Splits "key=value"; returns nullopt when there is no '=' or the key is empty.
std::optional<std::pair<std::string, std::string>> split_override(std::string_view arg);

}  // namespace llmtune::config
