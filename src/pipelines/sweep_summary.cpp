// The results table of a sweep, or of any directory of run directories: one row per run with the
// varied keys and the numbers of its summary.json / metrics.jsonl / result.json, the best run
// marked; written as sweep_summary.md, .jsonl and .csv, plus eval_loss.svg (every run's eval loss).
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "llmtune/io/atomic_file.h"
#include "llmtune/pipelines/sweep.h"
#include "llmtune/train/loss_plot.h"
#include "llmtune/util/error.h"
#include "run_directory.h"

namespace llmtune::pipelines {
namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
namespace {

// The numbers of one row, in column order; a missing one is null.
constexpr const char* kNumberColumns[] = {"final_loss", "best_eval_loss", "best_eval_perplexity", "tokens_per_second",
                                          "peak_memory_bytes", "wall_seconds"};

ojson read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return ojson();
  auto j = ojson::parse(in, nullptr, false);
  return j.is_discarded() ? ojson() : j;
}

// First number found under any of `keys` (a key may be "a/b" for a nested object).
ojson first_number(const ojson& j, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    const ojson* at = &j;
    std::stringstream parts(key);
    for (std::string part; at && std::getline(parts, part, '/');)
      at = at->is_object() && at->contains(part) ? &at->at(part) : nullptr;
    if (at && at->is_number()) return *at;
  }
  return ojson();
}

// One run's numbers and its eval-loss points.
ojson run_row(const fs::path& dir, std::vector<std::pair<double, double>>& eval_points) {
  ojson row = ojson::object();
  for (const char* c : kNumberColumns) row[c] = nullptr;
  ojson last_loss;
  std::ifstream metrics(dir / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    auto rec = ojson::parse(line, nullptr, false);
    if (!rec.is_object() || !rec.contains("step")) continue;
    if (rec.contains("loss") && rec["loss"].is_number()) last_loss = rec["loss"];
    if (rec.contains("eval_loss") && rec["eval_loss"].is_number()) {
      const double loss = rec["eval_loss"].get<double>();
      eval_points.emplace_back(rec["step"].get<double>(), loss);
      if (row["best_eval_loss"].is_null() || loss < row["best_eval_loss"].get<double>()) {
        row["best_eval_loss"] = rec["eval_loss"];
        row["best_eval_perplexity"] = rec.value("eval_perplexity", ojson());
      }
    }
  }
  row["final_loss"] = last_loss;
  const ojson summary = read_json(dir / "summary.json");
  if (summary.is_object() && !summary.value("interrupted", true)) {
    row["final_loss"] = first_number(summary, {"final_loss"});
    row["tokens_per_second"] = first_number(summary, {"tokens_per_second"});
    row["peak_memory_bytes"] = first_number(summary, {"peak_memory_bytes"});
    row["wall_seconds"] = first_number(summary, {"wall_seconds"});
  }
  // eval, prune and quantize report through --json (result.json); prune also writes prune_report.json.
  ojson result = read_json(dir / "result.json");
  if (!result.is_object()) result = read_json(dir / "prune_report.json");
  if (result.is_object()) {
    row["best_eval_loss"] = first_number(result, {"loss", "quantized_loss", "eval/loss_after"});
    row["best_eval_perplexity"] = first_number(result, {"perplexity", "quantized_perplexity", "eval/perplexity_after"});
    row["tokens_per_second"] = first_number(result, {"tokens_per_second"});
    row["peak_memory_bytes"] = first_number(result, {"peak_memory_bytes", "peak_rss_bytes"});
    row["wall_seconds"] = first_number(result, {"seconds", "eval_seconds"});
  }
  return row;
}

// A run directory's own status: run.json's state, else finished when it holds a result.
std::string directory_status(const fs::path& dir) {
  const std::string st = read_run_state(dir).value("state", "");
  if (st == "training") return "running";
  if (!st.empty()) return st;
  if (run_finished(dir, ojson::object()) || fs::exists(dir / "result.json") || fs::exists(dir / "prune_report.json"))
    return "finished";
  return "unknown";
}

bool looks_like_run(const fs::path& dir) {
  for (const char* f : {"run.json", "summary.json", "metrics.jsonl", "result.json", "prune_report.json"})
    if (fs::exists(dir / f)) return true;
  return false;
}

// config.yaml flattened to dotted keys (values as YAML text).
void flatten(const YAML::Node& node, const std::string& prefix, std::map<std::string, std::string>& out) {
  if (node.IsMap()) {
    for (const auto& item : node) flatten(item.second, prefix + (prefix.empty() ? "" : ".") + item.first.Scalar(), out);
  } else if (node.IsScalar()) {
    out[prefix] = node.Scalar();
  } else if (node.IsSequence()) {
    YAML::Emitter e;
    e << YAML::Flow << node;
    out[prefix] = e.c_str();
  } else {
    out[prefix] = "null";
  }
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string number_text(const ojson& v) { return v.is_null() ? "" : v.dump(); }

std::string cell(const ojson& v, const char* column) {
  if (v.is_null()) return "-";
  const double x = v.get<double>();
  const std::string c = column;
  if (c == "peak_memory_bytes") return fmt::format("{:.1f} MiB", x / (1 << 20));
  if (c == "wall_seconds") return fmt::format("{:.1f} s", x);
  if (c == "tokens_per_second") return fmt::format("{:.0f}", x);
  if (c == "best_eval_perplexity") return fmt::format("{:.3f}", x);
  return fmt::format("{:.4f}", x);
}

const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

}  // namespace

ojson summarize_runs(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw UsageError(dir.string() + ": no such directory (give a sweep directory or a directory of runs)");
  ojson table{{"dir", dir.string()}, {"keys", ojson::array()}, {"runs", ojson::array()}, {"best", nullptr}};
  struct Entry {
    std::string name, status, error;
    std::map<std::string, std::string> values;
  };
  std::vector<Entry> entries;
  std::vector<std::string> keys;
  const ojson sweep = read_json(dir / "sweep.json");
  if (sweep.is_object() && sweep.contains("runs")) {
    for (const auto& axis : sweep["axes"])
      for (const auto& k : axis["keys"]) keys.push_back(k.get<std::string>());
    for (const auto& r : sweep["runs"]) {
      Entry e{r.value("name", ""), r.value("status", "pending"), r.value("error", ""), {}};
      for (const auto& [k, v] : r["values"].items()) e.values[k] = v.get<std::string>();
      if (e.status == "running" || e.status == "pending") {
        const std::string own = fs::exists(dir / e.name) ? directory_status(dir / e.name) : "";
        if (!own.empty() && own != "unknown") e.status = own;
      }
      entries.push_back(std::move(e));
    }
  } else {
    std::vector<fs::path> runs;
    for (const auto& item : fs::directory_iterator(dir))
      if (item.is_directory() && looks_like_run(item.path())) runs.push_back(item.path());
    std::sort(runs.begin(), runs.end());
    if (runs.empty())
      throw UsageError(dir.string() + ": holds no run directories (none with run.json, summary.json, metrics.jsonl or result.json)");
    std::map<std::string, std::set<std::string>> distinct;
    for (const auto& r : runs) {
      Entry e{r.filename().string(), directory_status(r), read_run_state(r).value("error", ""), {}};
      try {
        if (fs::exists(r / "config.yaml")) flatten(YAML::LoadFile((r / "config.yaml").string()), "", e.values);
      } catch (const YAML::Exception& ex) {
        throw ConfigError((r / "config.yaml").string() + ": cannot read (" + ex.msg + ")");
      }
      e.values.erase("output");
      entries.push_back(std::move(e));
    }
    std::set<std::string> all;
    for (const auto& e : entries)
      for (const auto& [k, v] : e.values) all.insert(k);
    for (const auto& k : all) {
      std::set<std::string> seen;
      for (const auto& e : entries) seen.insert(e.values.count(k) ? e.values.at(k) : "(unset)");
      if (seen.size() > 1) keys.push_back(k);
    }
  }
  table["keys"] = keys;

  std::vector<train::PlotSeries> series;
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    std::vector<std::pair<double, double>> points;
    ojson row{{"run", e.name}};
    for (const auto& k : keys) row[k] = e.values.count(k) ? ojson(e.values.at(k)) : ojson();
    row["status"] = e.status;
    const ojson numbers = run_row(dir / e.name, points);
    for (const auto& [k, v] : numbers.items()) row[k] = v;
    row["best"] = false;
    row["error"] = e.error.empty() ? ojson() : ojson(e.error);
    table["runs"].push_back(row);
    if (!points.empty()) series.push_back({e.name, kPalette[i % std::size(kPalette)], points, false, true});
  }
  // The best run: lowest best eval loss among finished runs, else lowest final train loss.
  for (const char* by : {"best_eval_loss", "final_loss"}) {
    int best = -1;
    for (size_t i = 0; i < table["runs"].size(); ++i) {
      const ojson& r = table["runs"][i];
      if (r["status"] != "finished" || r[by].is_null()) continue;
      if (best < 0 || r[by].get<double>() < table["runs"][best][by].get<double>()) best = static_cast<int>(i);
    }
    if (best >= 0) {
      table["runs"][best]["best"] = true;
      table["best"] = table["runs"][best]["run"];
      table["best_by"] = by;
      break;
    }
  }

  std::string jsonl, csv = "run";
  for (const auto& k : keys) csv += "," + csv_field(k);
  csv += ",status";
  for (const char* c : kNumberColumns) csv += std::string(",") + c;
  csv += ",best,error\n";
  for (const auto& r : table["runs"]) {
    jsonl += r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    csv += csv_field(r["run"].get<std::string>());
    for (const auto& k : keys) csv += "," + (r[k].is_null() ? std::string() : csv_field(r[k].get<std::string>()));
    csv += "," + r["status"].get<std::string>();
    for (const char* c : kNumberColumns) csv += "," + number_text(r[c]);
    csv += std::string(",") + (r["best"].get<bool>() ? "true" : "false") + "," +
           (r["error"].is_null() ? std::string() : csv_field(r["error"].get<std::string>())) + "\n";
  }
  io::write_file_atomic(dir / "sweep_summary.md", summary_markdown(table));
  io::write_file_atomic(dir / "sweep_summary.jsonl", jsonl);
  io::write_file_atomic(dir / "sweep_summary.csv", csv);
  if (!series.empty())
    io::write_file_atomic(dir / "eval_loss.svg",
                          train::svg_line_chart({"eval loss per run: " + dir.filename().string(), "step", "eval loss", "", true}, series));
  return table;
}

std::string summary_markdown(const ojson& table) {
  static const char* const kHeaders[] = {"final loss", "best eval loss", "best eval ppl", "tokens/s", "peak memory", "wall"};
  std::string head = "| run |", rule = "|---|";
  for (const auto& k : table["keys"]) head += " " + k.get<std::string>() + " |", rule += "---|";
  head += " status |";
  rule += "---|";
  for (const char* h : kHeaders) head += std::string(" ") + h + " |", rule += "---:|";
  std::string out = head + "\n" + rule + "\n";
  for (const auto& r : table["runs"]) {
    out += "| " + r["run"].get<std::string>() + (r["best"].get<bool>() ? " ★" : "") + " |";
    for (const auto& k : table["keys"]) out += " " + (r[k.get<std::string>()].is_null() ? "-" : r[k.get<std::string>()].get<std::string>()) + " |";
    out += " " + r["status"].get<std::string>() + " |";
    for (const char* c : kNumberColumns) out += " " + cell(r[c], c) + " |";
    out += "\n";
  }
  if (!table["best"].is_null())
    out += fmt::format("\n★ best: {} (lowest {} among finished runs)\n", table["best"].get<std::string>(),
                       table["best_by"] == "best_eval_loss" ? "best eval loss" : "final train loss");
  return out;
}

}  // namespace llmtune::pipelines
