// validate's two outputs: the JSON object (--json) and the readable report, one labelled block per
// section, the warnings, the problems, and the closing line "ok: a run would start" or "N problems".
#include <fmt/format.h>

#include <sstream>

#include "llmtune/pipelines/validate.h"
#include "validate_parts.h"

namespace llmtune::pipelines {
namespace {

using ojson = nlohmann::ordered_json;

double num(const ojson& j, const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0; }
int64_t count(const ojson& j, const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0; }
std::string str(const ojson& j, const char* key) { return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : ""; }

// 1234567 -> "1,234,567"
std::string grouped(int64_t n) {
  std::string s = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return (n < 0 ? "-" : "") + out;
}

void model_block(std::ostringstream& out, const ojson& m) {
  out << fmt::format("model      {}", str(m, "path"));
  if (m.contains("model_type"))
    out << fmt::format(": {}, {} layers, hidden {}, intermediate {}, {}/{} heads, vocab {}, {:.3g}M parameters{}",
                       str(m, "model_type"), count(m, "layers"), count(m, "hidden_size"), count(m, "intermediate_size"), count(m, "heads"),
                       count(m, "kv_heads"), count(m, "vocab_size"), num(m, "parameters") / 1e6,
                       m.contains("init") ? ", " + str(m, "init") + " init" : "");
  out << "\n";
  if (!m.contains("weights")) return;
  const ojson& w = m["weights"];
  if (w.is_string()) {
    out << "           weights " << w.get<std::string>() << "\n";
  } else if (w.is_object()) {
    std::string dtypes;
    for (const auto& [name, n] : w["dtypes"].items()) dtypes += fmt::format("{}{} {}", dtypes.empty() ? "" : ", ", name, n.get<int64_t>());
    out << fmt::format("           weights {}: {} tensors ({}), {} checked against config.json: {} missing, {} with another shape, "
                       "{} unused\n", str(w, "files"), count(w, "tensors"), dtypes, count(w, "checked"), w["missing"].size(),
                       w["mismatched"].size(), w["unexpected"].size());
  }
  if (m.contains("quantization")) out << "           base     " << str(m, "quantization") << "\n";
}

// prune, quantize, eval: each calibration or evaluation file with its rows, tokens and windows.
void command_data_block(std::ostringstream& out, const ojson& files) {
  const char* label = "data       ";
  for (const auto& f : files) {
    out << label << fmt::format("{} {}", str(f, "key"), str(f, "path"));
    if (f.contains("tokens")) {
      out << fmt::format(": {} rows, {} tokens", grouped(count(f, "rows")), grouped(count(f, "tokens")));
      if (f.contains("windows")) out << "; ";
      if (f.contains("distinct_windows"))
        out << fmt::format("{} windows of {} tokens drawn ({} without overlap)", count(f, "windows"), count(f, "seq_len"),
                           grouped(count(f, "distinct_windows")));
      else if (f.contains("windows"))
        out << fmt::format("{} windows of {} tokens", grouped(count(f, "windows")), count(f, "seq_len"));
    }
    out << "\n";
    label = "           ";
  }
}

void data_block(std::ostringstream& out, const ojson& d) {
  if (d.is_array()) return command_data_block(out, d);
  out << fmt::format("data       {}", str(d, "path"));
  if (d.contains("format")) out << fmt::format(": format {}, template {}", str(d, "format"), str(d, "template"));
  out << "\n";
  if (d.contains("note")) out << fmt::format("           {} rows read; {}\n", count(d, "rows"), str(d, "note"));
  if (d.contains("files"))
    for (const auto& f : d["files"])
      out << fmt::format("           {}: {} rows: {} kept, {} truncated, {} dropped as too long, {} dropped with nothing left to "
                         "train, {} with no trained token, {} bad\n", str(f, "path"), count(f, "rows"), count(f, "kept"),
                         count(f, "truncated"), count(f, "dropped_too_long"), count(f, "dropped_nothing_left"),
                         count(f, "no_trained_token"), count(f, "bad"));
  if (d.contains("tokens_per_row") && count(d["tokens_per_row"], "rows") > 0) {
    const ojson& t = d["tokens_per_row"];
    out << fmt::format("           tokens per row (before truncation): min {}, mean {:.1f}, max {}\n", count(t, "min"), num(t, "mean"),
                       count(t, "max"));
    int64_t most = 1;
    for (const auto& b : t["histogram"]) most = std::max(most, count(b, "rows"));
    for (const auto& b : t["histogram"]) {
      const std::string range = b["max"].is_null() ? fmt::format("> {}", count(b, "min") - 1)
                                                   : fmt::format("{}-{}", count(b, "min"), count(b, "max"));
      const auto bar = static_cast<size_t>(40.0 * static_cast<double>(count(b, "rows")) / static_cast<double>(most) + 0.5);
      out << fmt::format("             {:>11} {:>8}{}{}\n", range, count(b, "rows"), bar ? " " : "", std::string(bar, '#'));
    }
  }
  if (d.contains("examples"))
    out << fmt::format("           examples: {} train, {} validation ({}); {} tokens in all, {} trained\n", count(d["examples"], "train"),
                       count(d["examples"], "val"), str(d, "validation"), grouped(count(d, "tokens")),
                       grouped(count(d, "trained_tokens")));
}

}  // namespace

ojson ValidateReport::to_json() const {
  ojson j = {{"ok", ok()}, {"command", command}, {"problems", problems}, {"warnings", warnings}};
  for (const auto& [key, value] : sections.items()) j[key] = value;
  return j;
}

std::string ValidateReport::to_text() const {
  std::ostringstream out;
  if (sections.contains("config")) {
    const ojson& c = sections["config"];
    out << fmt::format("config     {} (command {}: {})\n", str(c, "file").empty() ? "(key=value only)" : str(c, "file"), command,
                       str(c, "command_from"));
  }
  if (sections.contains("model")) model_block(out, sections["model"]);
  if (sections.contains("tokenizer")) {
    const ojson& t = sections["tokenizer"];
    if (t.is_null()) out << "tokenizer  did not load\n";
    else
      out << fmt::format("tokenizer  vocab {}, bos {}, eos {}, pad {}, chat template {}\n", count(t, "vocab_size"),
                         t["bos"].is_null() ? "none" : t["bos"].get<std::string>(), t["eos"].is_null() ? "none" : t["eos"].get<std::string>(),
                         t["pad"].is_null() ? "none" : t["pad"].get<std::string>(), t["chat_template"].get<bool>() ? "yes" : "no");
  }
  if (sections.contains("teacher")) {
    const ojson& t = sections["teacher"];
    out << fmt::format("teacher    {}{}\n", str(t, "cache").empty() ? str(t, "path") : "cache " + str(t, "cache"),
                       t.contains("bytes") ? ", " + bytes_text(num(t, "bytes")) + " as loaded" : "");
  }
  if (sections.contains("adapters"))
    for (const auto& a : sections["adapters"])
      out << fmt::format("adapter    {} {}{}\n", str(a, "key"), str(a, "path"),
                         a.contains("method") ? fmt::format(": {}, {} modules", str(a, "method"), count(a, "modules")) : "");
  if (sections.contains("data")) data_block(out, sections["data"]);
  if (sections.contains("output")) {
    const ojson& o = sections["output"];
    out << fmt::format("output     {}: {}\n", str(o, "path"),
                       !o["exists"].get<bool>() ? "new" : o["force"].get<bool>() ? "exists, replaced (force)" : "exists");
  }
  if (sections.contains("device")) out << fmt::format("device     {} {}\n", str(sections["device"], "device"), str(sections["device"], "dtype"));
  if (sections.contains("packing")) {
    const ojson& k = sections["packing"];
    out << fmt::format("packing    {}: {} rows per epoch, {:.1f}% of the token slots are real tokens ({:.1f}% padding)\n",
                       k["enabled"].get<bool>() ? "on" : "off", grouped(count(k, "rows_per_epoch")), 100 * num(k, "efficiency"),
                       100 * num(k, "padding_fraction"));
  }
  if (sections.contains("steps")) {
    const ojson& s = sections["steps"];
    out << fmt::format("steps      {} batches per epoch; {} optimizer steps of {} micro-batch(es) = {:.2f} epochs, warmup {}; {} tokens, "
                       "{} trained\n", count(s, "batches_per_epoch"), count(s, "optimizer_steps"), count(s, "grad_accum_steps"),
                       num(s, "epochs"), count(s, "warmup_steps"), grouped(count(s, "tokens")), grouped(count(s, "trained_tokens")));
  }
  if (sections.contains("memory")) {
    const ojson& m = sections["memory"];
    const double limit = num(m, "limit_bytes");
    out << fmt::format("memory     {} {}: weights {} + activations {} + logits {}{} = {} of {}: {}\n", str(m, "device"), str(m, "dtype"),
                       bytes_text(num(m, "weights_bytes")), bytes_text(num(m, "activations_bytes")), bytes_text(num(m, "logits_bytes")),
                       num(m, "teacher_bytes") > 0 ? " + teacher " + bytes_text(num(m, "teacher_bytes")) : "",
                       bytes_text(num(m, "total_bytes")), limit > 0 ? bytes_text(limit) : "an unknown limit",
                       m["fits"].get<bool>() ? "fits" : "does NOT fit");
  }
  if (sections.contains("sweep"))
    out << fmt::format("sweep      {} axes, {} swept values resolved and checked\n", count(sections["sweep"], "axes"),
                       count(sections["sweep"], "values_checked"));
  if (!warnings.empty()) {
    out << "warnings\n";
    for (const auto& w : warnings) out << "  - " << w << "\n";
  }
  if (!problems.empty()) {
    out << "problems\n";
    for (const auto& p : problems) out << "  - " << p << "\n";
  }
  out << (ok() ? std::string("ok: a run would start") : fmt::format("{} problem{}", problems.size(), problems.size() == 1 ? "" : "s"))
      << "\n";
  return out.str();
}

}  // namespace llmtune::pipelines
