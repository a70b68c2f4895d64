// The schema side of util/config: key types, the key list, and the "did you mean" suggestion for
// an unknown key (the nearest key by edit distance, bounded so that a hostile key costs little).
#include <algorithm>
#include <cctype>
#include <stdexcept>
#include <string>
#include <vector>

#include "llmtune/util/config.h"

namespace llmtune::config {
namespace {

// Levenshtein distance of a and b, or bound + 1 as soon as it is certain to exceed `bound` (a
// hostile config's kilobyte-long unknown keys cost a few rows each, not |a| x |b|).
size_t edit_distance(std::string_view a, std::string_view b, size_t bound) {
  if ((a.size() > b.size() ? a.size() - b.size() : b.size() - a.size()) > bound) return bound + 1;
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    size_t row_min = row[0];
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      row_min = std::min(row_min, row[j]);
      diag = up;
    }
    if (row_min > bound) return bound + 1;  // every later row is at least this row's minimum
  }
  return std::min(row[b.size()], bound + 1);
}

std::string_view last_part(std::string_view name) {
  auto dot = name.rfind('.');
  return dot == std::string_view::npos ? name : name.substr(dot + 1);
}

}  // namespace

std::string_view type_name(Type type) {
  switch (type) {
    case Type::Bool: return "a boolean (true/false)";
    case Type::Int: return "an integer";
    case Type::Float: return "a number";
    case Type::String: return "a string";
    case Type::StringList: return "a list of strings";
  }
  return "a value";
}

Schema& Schema::add(Key key) {
  if (find(key.name)) throw std::logic_error("config schema: duplicate key " + key.name);
  if (key.default_value) {
    static constexpr Type kTypeOfIndex[] = {Type::Bool, Type::Int, Type::Float, Type::String, Type::StringList};
    if (kTypeOfIndex[key.default_value->index()] != key.type)
      throw std::logic_error("config schema: default of " + key.name + " has the wrong type");
  }
  keys_.push_back(std::move(key));
  return *this;
}

const Key* Schema::find(std::string_view name) const {
  for (const auto& k : keys_)
    if (k.name == name) return &k;
  return nullptr;
}

bool Schema::is_section(std::string_view prefix) const {
  std::string p = std::string(prefix) + ".";
  return std::any_of(keys_.begin(), keys_.end(), [&](const Key& k) { return k.name.starts_with(p); });
}

std::string Schema::suggest(std::string_view unknown) const {
  // Only a key within `limit` edits is suggested, so no distance beyond it needs computing.
  const size_t limit = std::max<size_t>(2, unknown.size() / 3);
  auto lower = [](std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
    return out;
  };
  const std::string unknown_lower = lower(unknown);
  std::string best;
  size_t best_distance = limit + 1;
  for (const auto& k : keys_) {
    if (best_distance == 0) break;
    // The same final word in another section ("lr" for "train.lr") is the likeliest mistake.
    size_t d = last_part(k.name) == last_part(unknown) ? 0 : edit_distance(unknown_lower, lower(k.name), best_distance - 1);
    if (d < best_distance) {
      best_distance = d;
      best = k.name;
    }
  }
  return best;
}

}  // namespace llmtune::config
