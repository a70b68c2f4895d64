// A sweep file and command-line axes → SweepDefinition → the table of runs (grid × paired groups,
// optionally sampled), each with a readable, file-system-safe name.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <queue>
#include <set>

#include "../util/config_yaml.h"
#include "llmtune/pipelines/sweep.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
namespace {

// Runs in one sweep, and combinations a sample is drawn from: past these it is a mistake, not a plan.
constexpr uint64_t kMaxRuns = 100000;
constexpr uint64_t kMaxSampledCombinations = 100000000;

// A value as YAML text: a scalar as written, a list of scalars in flow style. "" + error otherwise.
std::optional<std::string> value_text(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsNull()) return std::string("null");
  if (!node.IsSequence()) return std::nullopt;
  YAML::Emitter out;
  out << YAML::Flow << YAML::BeginSeq;
  for (const auto& item : node) {
    if (!item.IsScalar()) return std::nullopt;
    out << item.Scalar();
  }
  out << YAML::EndSeq;
  return std::string(out.c_str());
}

struct Loader {
  SweepDefinition d;
  std::vector<std::string> errors;
  std::string file, sample_origin;

  std::string where(const YAML::Node& node) const { return fmt::format("{}:{}", file, node.Mark().line + 1); }

  void add_base(const std::string& key, const std::string& value, const std::string& origin) {
    if (key == "output") {
      d.output = value;
      return;
    }
    std::erase_if(d.base, [&](const auto& kv) { return kv.first == key; });
    d.base.emplace_back(key, value);
    d.origins.emplace_back(key + "=" + value, origin);
  }

  // The base config: nested maps flattened into dotted keys, as the commands read them.
  void base_map(const YAML::Node& map, const std::string& prefix) {
    for (const auto& item : map) {
      const std::string key = prefix + item.first.Scalar();
      if (prefix.empty() && (key == "command" || key == "sweep")) continue;
      if (item.second.IsMap()) {
        base_map(item.second, key + ".");
        continue;
      }
      auto text = value_text(item.second);
      if (!text) {
        errors.push_back(where(item.first) + ": " + key + ": expects a value or a list of values, got a nested structure");
        continue;
      }
      add_base(key, item.second.IsNull() ? "" : *text, where(item.first));
    }
  }

  // One axis' values; `name` is how messages call it ("sweep.grid.train.lr").
  std::optional<std::vector<std::string>> axis_values(const YAML::Node& node, const std::string& name) {
    if (!node.IsSequence()) {
      errors.push_back(where(node) + ": " + name + ": expects a list of values to sweep (e.g. [1e-3, 3e-3]), got " +
                       (node.IsMap() ? "a map" : "'" + (node.IsScalar() ? node.Scalar() : std::string()) + "'") +
                       " (a fixed value goes outside the sweep block)");
      return std::nullopt;
    }
    std::vector<std::string> values;
    for (const auto& item : node) {
      auto text = value_text(item);
      if (!text) {
        errors.push_back(where(item) + ": " + name + ": each value must be a scalar or a list of scalars");
        return std::nullopt;
      }
      if (std::find(values.begin(), values.end(), *text) != values.end()) {
        errors.push_back(where(item) + ": " + name + ": the value " + *text + " is listed twice");
        return std::nullopt;
      }
      values.push_back(*text);
    }
    if (values.empty()) {
      errors.push_back(where(node) + ": " + name + ": an empty list (give at least one value)");
      return std::nullopt;
    }
    return values;
  }

  void grid(const YAML::Node& map, const std::string& prefix) {
    for (const auto& item : map) {
      const std::string key = prefix + item.first.Scalar();
      if (item.second.IsMap()) {
        grid(item.second, key + ".");
        continue;
      }
      if (auto values = axis_values(item.second, "sweep.grid." + key)) {
        SweepAxis axis{{key}, {}, where(item.first) + " (sweep.grid)"};
        for (const auto& v : *values) axis.points.push_back({v}), d.origins.emplace_back(key + "=" + v, axis.origin);
        d.axes.push_back(std::move(axis));
      }
    }
  }

  void paired_group(const YAML::Node& group, size_t index) {
    const std::string name = fmt::format("sweep.paired[{}]", index);
    if (!group.IsMap() || group.size() == 0) {
      errors.push_back(where(group) + ": " + name + ": expects a map of key: [values] varied together");
      return;
    }
    SweepAxis axis{{}, {}, where(group) + " (" + name + ")"};
    std::vector<std::vector<std::string>> columns;
    std::string first;
    for (const auto& item : group) {
      const std::string key = item.first.Scalar();
      auto values = axis_values(item.second, name + "." + key);
      if (!values) return;
      if (!columns.empty() && values->size() != columns[0].size()) {
        errors.push_back(fmt::format("{}: {}: lists of unequal length: {} has {} values, {} has {} (paired lists vary "
                                     "together: give each the same number)",
                                     where(item.first), name, first, columns[0].size(), key, values->size()));
        return;
      }
      if (columns.empty()) first = key;
      for (const auto& v : *values) d.origins.emplace_back(key + "=" + v, axis.origin);
      axis.keys.push_back(key);
      columns.push_back(*values);
    }
    for (size_t i = 0; i < columns[0].size(); ++i) {
      axis.points.emplace_back();
      for (const auto& column : columns) axis.points.back().push_back(column[i]);
    }
    d.axes.push_back(std::move(axis));
  }

  void sweep_block(const YAML::Node& sweep) {
    if (!sweep.IsMap()) {
      errors.push_back(where(sweep) + ": sweep: expects a map (grid:, paired:, sample:, seed:)");
      return;
    }
    for (const auto& item : sweep) {
      const std::string key = item.first.Scalar();
      const YAML::Node& node = item.second;
      if (key == "grid") {
        if (node.IsMap()) grid(node, "");
        else errors.push_back(where(item.first) + ": sweep.grid: expects a map of key: [values]");
      } else if (key == "paired") {
        if (node.IsMap()) {
          paired_group(node, 0);
        } else if (node.IsSequence()) {
          for (size_t i = 0; i < node.size(); ++i) paired_group(node[i], i);
        } else {
          errors.push_back(where(item.first) + ": sweep.paired: expects a list of maps of key: [values]");
        }
      } else if (key == "sample" || key == "seed") {
        set_number(key, node.IsScalar() ? node.Scalar() : "", where(item.first));
      } else {
        errors.push_back(where(item.first) + ": sweep: unknown key '" + key + "' (sweep takes grid, paired, sample, seed)");
      }
    }
  }

  void set_number(const std::string& key, const std::string& text, const std::string& origin) {
    int64_t v = -1;
    try {
      size_t used = 0;
      v = std::stoll(text, &used);
      if (used != text.size()) v = -1;
    } catch (const std::exception&) {
    }
    if (v < (key == "sample" ? 1 : 0)) {
      errors.push_back(origin + ": sweep." + key + ": expects " + (key == "sample" ? "a positive" : "a non-negative") +
                       " integer, got '" + text + "'");
      return;
    }
    if (key == "sample") d.sample = v, sample_origin = origin;
    else d.seed = static_cast<uint64_t>(v);
  }

  // key=value (a fixed value, or one that pins a grid axis) or key=[a, b] (an axis) from the command line.
  void argument(const std::string& arg) {
    const auto eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      errors.push_back("command line '" + arg + "': expected key=value or key=[a, b]");
      return;
    }
    const std::string key = arg.substr(0, eq), value = arg.substr(eq + 1), origin = "command line '" + arg + "'";
    if (key == "command") {
      d.command = value;
      return;
    }
    if (key == "sweep.sample" || key == "sweep.seed") {
      set_number(key.substr(6), value, origin);
      return;
    }
    auto in_axis = std::find_if(d.axes.begin(), d.axes.end(), [&](const SweepAxis& a) {
      return std::find(a.keys.begin(), a.keys.end(), key) != a.keys.end();
    });
    if (in_axis != d.axes.end() && in_axis->keys.size() > 1) {
      errors.push_back(origin + ": " + key + " is varied with " + in_axis->keys[in_axis->keys[0] == key ? 1 : 0] + " in " +
                       in_axis->origin + "; change the paired lists in the file instead");
      return;
    }
    if (value.starts_with('[')) {
      YAML::Node node;
      try {
        node = YAML::Load(value);
      } catch (const YAML::Exception& e) {
        errors.push_back(origin + ": cannot read '" + value + "' as a list (" + e.msg + "); write key=[a, b]");
        return;
      }
      auto values = axis_values(node, key);
      if (!values) return;
      SweepAxis axis{{key}, {}, origin};
      for (const auto& v : *values) axis.points.push_back({v}), d.origins.emplace_back(key + "=" + v, origin);
      if (in_axis != d.axes.end()) *in_axis = std::move(axis);  // replaces the file's values, in place
      else d.axes.push_back(std::move(axis));
      return;
    }
    if (in_axis != d.axes.end()) {  // pinned: the axis is gone
      spdlog::info("sweep: {} fixed to {} by the command line (instead of the values of {})", key, value, in_axis->origin);
      d.axes.erase(in_axis);
    }
    add_base(key, value, origin);
  }
};

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

std::string last_component(const std::string& key) {
  const auto dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

// A value in a run name: list items joined by '+', anything but [A-Za-z0-9._+-] as '_'.
std::string name_value(std::string v) {
  if (v.starts_with('[') && v.ends_with(']')) {
    v = v.substr(1, v.size() - 2);
    std::string joined;
    for (char c : v) joined += c == ',' ? '+' : c;
    std::erase(joined, ' ');
    v = joined;
  }
  for (char& c : v)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '+' && c != '-') c = '_';
  return v.empty() ? "_" : v;
}

}  // namespace

SweepDefinition load_sweep(const std::optional<fs::path>& file, const std::vector<std::string>& args) {
  Loader l;
  if (file) {
    l.file = file->string();
    std::string text = config::read_text_file(*file);
    auto root = config::load_config_yaml(text);
    if (const auto* problem = std::get_if<config::YamlProblem>(&root))
      throw ConfigError(l.file + ":" + std::to_string(problem->line) + problem->message);
    const YAML::Node& node = std::get<YAML::Node>(root);
    if (node.IsMap()) {
      for (const auto& item : node)
        if (!item.first.IsScalar()) throw ConfigError(l.where(item.first) + ": keys must be plain names");
      if (node["command"]) {
        const YAML::Node& c = node["command"];
        l.d.command = c.IsScalar() ? c.Scalar() : "";
      }
      l.base_map(node, "");
      if (node["sweep"]) l.sweep_block(node["sweep"]);
    }
  }
  for (const auto& arg : args) l.argument(arg);
  auto& d = l.d;
  const auto& commands = sweep_commands();
  if (std::find(commands.begin(), commands.end(), d.command) == commands.end())
    l.errors.push_back("command: '" + d.command + "' cannot be swept: use finetune, distill, prune, quantize or eval");
  // A key in two axes, or an axis over output.
  std::map<std::string, std::string> seen;
  for (const auto& axis : d.axes)
    for (const auto& key : axis.keys) {
      if (key == "output") l.errors.push_back(axis.origin + ": output is the sweep directory; it cannot be swept");
      else if (!seen.emplace(key, axis.origin).second)
        l.errors.push_back(axis.origin + ": " + key + " is already swept in " + seen[key] + "; sweep each key once");
    }
  // A one-value axis varies nothing: it is a fixed value.
  for (auto it = d.axes.begin(); it != d.axes.end();) {
    if (it->points.size() != 1) {
      ++it;
      continue;
    }
    for (size_t k = 0; k < it->keys.size(); ++k) l.add_base(it->keys[k], it->points[0][k], it->origin);
    it = d.axes.erase(it);
  }
  if (d.output.empty())
    l.errors.push_back("missing output: the sweep directory (output: DIR in the file, or output=DIR)");
  if (d.axes.empty() && l.errors.empty())
    l.errors.push_back((file ? file->string() + ": " : std::string()) +
                       "nothing to sweep: add a sweep: block (grid: {key: [a, b]}) or key=[a,b] on the command line");
  const uint64_t limit = d.sample ? kMaxSampledCombinations : kMaxRuns;
  uint64_t total = 1;
  for (const auto& axis : d.axes) total = std::min<uint64_t>(total * axis.points.size(), limit + 1);
  if (total > limit)
    l.errors.push_back(fmt::format("{}the sweep has more than {} combinations: {}", file ? file->string() + ": " : std::string(),
                                   limit, d.sample ? "give fewer values" : "use sweep.sample: N, or fewer values"));
  else if (d.sample && static_cast<uint64_t>(*d.sample) > kMaxRuns)
    l.errors.push_back(fmt::format("{}: sweep.sample: at most {} runs in one sweep", l.sample_origin, kMaxRuns));
  else if (d.sample && static_cast<uint64_t>(*d.sample) > total)
    l.errors.push_back(fmt::format("{}: sweep.sample: {} but the sweep has only {} combinations (lower it, or drop sample)",
                                   l.sample_origin, *d.sample, total));
  if (!l.errors.empty()) {
    std::string all;
    for (const auto& e : l.errors) all += (all.empty() ? "" : "\n") + e;
    throw ConfigError(all);
  }
  return d;
}

std::vector<std::string> swept_keys(const SweepDefinition& d) {
  std::vector<std::string> keys;
  for (const auto& axis : d.axes) keys.insert(keys.end(), axis.keys.begin(), axis.keys.end());
  return keys;
}

std::vector<SweepRun> expand_sweep(const SweepDefinition& d) {
  uint64_t total = 1;
  for (const auto& axis : d.axes) total *= axis.points.size();
  std::vector<uint64_t> chosen;
  if (d.sample) {
    // The `sample` lowest (rank, index) pairs, kept in a max-heap: memory O(sample), not O(total).
    std::priority_queue<std::pair<uint64_t, uint64_t>> lowest;
    for (uint64_t i = 0; i < total; ++i) {
      lowest.emplace(mix64(d.seed + (i + 1) * 0x9E3779B97F4A7C15ULL), i);
      if (lowest.size() > static_cast<size_t>(*d.sample)) lowest.pop();
    }
    for (; !lowest.empty(); lowest.pop()) chosen.push_back(lowest.top().second);
    std::sort(chosen.begin(), chosen.end());
  } else {
    chosen.resize(total);
    std::iota(chosen.begin(), chosen.end(), uint64_t{0});
  }
  // Name parts: the key's last component, or the whole key when two swept keys share it.
  const std::vector<std::string> keys = swept_keys(d);
  std::map<std::string, int> last_count;
  for (const auto& k : keys) ++last_count[last_component(k)];
  std::vector<SweepRun> runs;
  for (uint64_t index : chosen) {
    SweepRun run;
    std::vector<size_t> digits(d.axes.size());
    for (size_t a = d.axes.size(); a-- > 0;) {
      digits[a] = index % d.axes[a].points.size();
      index /= d.axes[a].points.size();
    }
    for (size_t a = 0; a < d.axes.size(); ++a)
      for (size_t k = 0; k < d.axes[a].keys.size(); ++k) {
        const std::string& key = d.axes[a].keys[k];
        const std::string& value = d.axes[a].points[digits[a]][k];
        run.values.emplace_back(key, value);
        run.name += (run.name.empty() ? "" : ",") + (last_count[last_component(key)] > 1 ? key : last_component(key)) + "=" +
                    name_value(value);
      }
    if (run.name.size() > 200) run.name = run.name.substr(0, 180) + fmt::format("-{:016x}", mix64(std::hash<std::string>{}(run.name)));
    runs.push_back(std::move(run));
  }
  // Values that read the same once made safe ("a/b" and "a_b") get -2, -3, ...
  std::map<std::string, int> count;
  for (const auto& r : runs) ++count[r.name];
  std::map<std::string, int> seen;
  for (auto& r : runs)
    if (count[r.name] > 1 && ++seen[r.name] > 1) r.name += "-" + std::to_string(seen[r.name]);
  return runs;
}

std::vector<std::string> run_arguments(const SweepDefinition& d, const SweepRun& run) {
  std::vector<std::string> args{d.command};
  auto lookup = [&](const std::string& key) {
    for (const auto& [k, v] : run.values)
      if (k == key) return v;
    for (const auto& [k, v] : d.base)
      if (k == key) return v;
    return std::string();
  };
  for (const auto& [k, v] : d.base) args.push_back(k + "=" + v);
  for (const auto& [k, v] : run.values) args.push_back(k + "=" + v);
  const fs::path dir = d.output / run.name;
  if (d.command == "quantize") {
    // A GGUF type writes one file: it goes inside the run directory.
    static const std::set<std::string> directory_types{"nf4", "fp4", "int8"};
    const std::string type = lookup("type");
    const bool gguf_file = lookup("method").empty() && !directory_types.count(type);
    args.push_back("output=" + (gguf_file ? (dir / "model.gguf").string() : dir.string()));
  } else if (d.command != "eval") {
    args.push_back("output=" + dir.string());
  }
  args.push_back("--json");
  return args;
}

nlohmann::ordered_json sweep_definition_json(const SweepDefinition& d, const std::vector<SweepRun>& runs) {
  nlohmann::ordered_json j;
  j["command"] = d.command;
  j["output"] = d.output.string();
  j["base"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : d.base) j["base"][k] = v;
  j["axes"] = nlohmann::ordered_json::array();
  for (const auto& a : d.axes) j["axes"].push_back({{"keys", a.keys}, {"points", a.points}});
  j["sample"] = d.sample ? nlohmann::ordered_json(*d.sample) : nlohmann::ordered_json();
  j["seed"] = d.seed;
  j["runs"] = nlohmann::ordered_json::array();
  for (const auto& r : runs) {
    nlohmann::ordered_json values = nlohmann::ordered_json::object();
    for (const auto& [k, v] : r.values) values[k] = v;
    j["runs"].push_back({{"name", r.name}, {"values", values}});
  }
  return j;
}

}  // namespace llmtune::pipelines
