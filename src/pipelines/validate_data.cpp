// validate's data checks: every row read and tokenized as the run would (load_dataset with a
// record per row), the rows that would stop the run grouped by reason with their line numbers, the
// tokens-per-row histogram, truncation, the validation split; then the batches as the run would make
// them (steps, tokens, packing efficiency).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "llmtune/data/batcher.h"
#include "llmtune/util/error.h"
#include "validate_parts.h"

namespace llmtune::pipelines {
namespace {

using Outcome = data::RowRecord::Outcome;
constexpr size_t kLinesNamed = 5;  // line numbers written out per reason; the rest is counted

// "3, 7, 12, 15, 20 and 4 more"
std::string lines_text(const std::vector<int64_t>& lines) {
  std::string s;
  for (size_t i = 0; i < lines.size() && i < kLinesNamed; ++i) s += (i ? ", " : "") + std::to_string(lines[i]);
  if (lines.size() > kLinesNamed) s += fmt::format(" and {} more", lines.size() - kLinesNamed);
  return s;
}

// A DataError's text without its leading "file:line: ", so that rows failing alike group together.
std::string reason_of(const data::RowRecord& r) {
  const std::string prefix = r.file.string() + ":" + std::to_string(r.line) + ": ";
  return r.problem.starts_with(prefix) ? r.problem.substr(prefix.size()) : r.problem;
}

// Rows that would stop the run (bad, or nothing to train), grouped by file and reason: problems, or
// warnings when data.skip_bad_rows skips them.
nlohmann::ordered_json report_bad_rows(const std::vector<data::RowRecord>& records, bool skip_bad_rows, ValidateReport& report) {
  std::map<std::pair<std::string, std::string>, std::vector<int64_t>> groups;
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& r : records) {
    if (r.outcome != Outcome::Bad && r.outcome != Outcome::NothingTrained) continue;
    auto key = std::pair{r.file.string(), reason_of(r)};
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(r.line);
  }
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& key : order) {
    const auto& lines = groups[key];
    const std::string where = fmt::format("{}:{}", key.first, lines_text(lines));
    const std::string count = lines.size() == 1 ? "" : fmt::format(" ({} rows)", lines.size());
    if (skip_bad_rows) report.warnings.push_back(where + count + ": skipped (data.skip_bad_rows): " + key.second);
    else report.problems.push_back(where + count + ": " + key.second);
    out.push_back({{"file", key.first}, {"reason", key.second}, {"rows", lines.size()}, {"lines", lines}});
  }
  return out;
}

nlohmann::ordered_json file_counts(const std::vector<data::RowRecord>& records, const std::filesystem::path& file) {
  std::map<Outcome, int64_t> n;
  int64_t rows = 0;
  for (const auto& r : records)
    if (r.file == file) ++rows, ++n[r.outcome];
  return {{"path", file.string()},
          {"rows", rows},
          {"kept", n[Outcome::Kept]},
          {"truncated", n[Outcome::Truncated]},
          {"dropped_too_long", n[Outcome::DroppedTooLong]},
          {"dropped_nothing_left", n[Outcome::DroppedNothingLeft]},
          {"no_trained_token", n[Outcome::NothingTrained]},
          {"bad", n[Outcome::Bad]}};
}

// Tokens per row (before truncation) of the rows that rendered: quarters of max_seq_len, and beyond it.
nlohmann::ordered_json token_histogram(const std::vector<data::RowRecord>& records, const std::filesystem::path& file,
                                       int64_t max_seq_len) {
  std::vector<int64_t> edges{0, max_seq_len / 4, max_seq_len / 2, 3 * max_seq_len / 4, max_seq_len};
  std::vector<int64_t> counts(edges.size(), 0);
  int64_t rows = 0, total = 0, lo = 0, hi = 0;
  for (const auto& r : records) {
    if (r.file != file || r.tokens < 0) continue;
    lo = rows ? std::min(lo, r.tokens) : r.tokens;
    hi = std::max(hi, r.tokens);
    ++rows, total += r.tokens;
    size_t bucket = edges.size() - 1;  // beyond max_seq_len
    for (size_t k = 0; k + 1 < edges.size(); ++k)
      if (r.tokens <= edges[k + 1]) {
        bucket = k;
        break;
      }
    ++counts[bucket];
  }
  nlohmann::ordered_json hist = nlohmann::ordered_json::array();
  for (size_t k = 0; k + 1 < edges.size(); ++k) hist.push_back({{"min", edges[k] + 1}, {"max", edges[k + 1]}, {"rows", counts[k]}});
  hist.push_back({{"min", max_seq_len + 1}, {"max", nullptr}, {"rows", counts.back()}});
  return {{"rows", rows}, {"min", lo}, {"mean", rows ? static_cast<double>(total) / static_cast<double>(rows) : 0.0},
          {"max", hi}, {"tokens", total}, {"histogram", hist}};
}

}  // namespace

std::optional<data::Dataset> check_data(const FinetuneParams& p, const tokenizer::Tokenizer& tok, ValidateReport& report) {
  data::DataParams params = p.data;
  params.skip_bad_rows = true;  // read on past every bad row; whether it would stop the run is decided below
  std::vector<data::RowRecord> records;
  std::optional<data::Dataset> ds;
  std::string failure;
  try {
    ds = data::load_dataset(params, tok, &records);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  nlohmann::ordered_json section = {{"path", p.data.path.string()}};
  if (ds) {
    section["format"] = ds->format;
    section["template"] = ds->template_name;
  }
  section["files"] = nlohmann::ordered_json::array({file_counts(records, p.data.path)});
  if (!p.data.val_path.empty()) section["files"].push_back(file_counts(records, p.data.val_path));
  section["tokens_per_row"] = token_histogram(records, p.data.path, p.data.max_seq_len);
  section["rows_left_out"] = report_bad_rows(records, p.data.skip_bad_rows, report);

  // Rows longer than max_seq_len: said when dropped; a dataset emptied by it gets the reason and the fix.
  std::vector<int64_t> too_long, cut_off;
  int64_t rendered = 0, longest = 0;
  for (const auto& r : records) {
    if (r.file != p.data.path) continue;
    if (r.tokens >= 0 && r.outcome != Outcome::NothingTrained) ++rendered, longest = std::max(longest, r.tokens);
    if (r.outcome == Outcome::DroppedTooLong) too_long.push_back(r.line);
    if (r.outcome == Outcome::DroppedNothingLeft) cut_off.push_back(r.line);
  }
  const std::string fix = fmt::format("raise data.max_seq_len (the longest row has {} tokens)", longest);
  const bool all_lost = (!too_long.empty() || !cut_off.empty()) && static_cast<int64_t>(too_long.size() + cut_off.size()) == rendered;
  if (all_lost) {
    std::vector<int64_t> lines = too_long;
    lines.insert(lines.end(), cut_off.begin(), cut_off.end());
    std::sort(lines.begin(), lines.end());
    report.problems.push_back(fmt::format(
        "{}:{}: all {} rows with tokens to train are lost at data.max_seq_len {} ({} longer than it with data.truncation drop, {} with "
        "every trained token past it): {}{}", p.data.path.string(), lines_text(lines), rendered, p.data.max_seq_len, too_long.size(),
        cut_off.size(), fix, too_long.empty() ? "" : ", or set data.truncation: truncate"));
  } else {
    if (!too_long.empty())
      report.warnings.push_back(fmt::format("{}:{} ({} rows): dropped, longer than data.max_seq_len {} (data.truncation drop)",
                                            p.data.path.string(), lines_text(too_long), too_long.size(), p.data.max_seq_len));
    if (!cut_off.empty())
      report.warnings.push_back(fmt::format("{}:{} ({} rows): dropped, truncation at data.max_seq_len {} cut off every trained token; {}",
                                            p.data.path.string(), lines_text(cut_off), cut_off.size(), p.data.max_seq_len, fix));
  }
  // An emptied dataset whose rows were reported above: its own "no usable rows" is not news.
  const bool rows_reported = !p.data.skip_bad_rows && !section["rows_left_out"].empty();
  if (!failure.empty() && !((rows_reported || all_lost) && failure.find("no usable rows") != std::string::npos &&
                            failure.starts_with(p.data.path.string())))
    report.problems.push_back(failure);

  if (ds) {
    section["examples"] = {{"train", ds->train.size()}, {"val", ds->val.size()}};
    section["validation"] = !p.data.val_path.empty() ? "data.val_path"
                            : p.data.val_fraction > 0 ? fmt::format("data.val_fraction {}", p.data.val_fraction)
                                                      : std::string("none");
    section["tokens"] = ds->stats.tokens;
    section["trained_tokens"] = ds->stats.trained_tokens;
  }
  report.sections["data"] = section;
  return ds;
}

void check_data_rows_only(const FinetuneParams& p, ValidateReport& report) {
  std::vector<data::RowRecord> records;
  std::map<std::string, int64_t> formats;
  try {
    data::read_rows(
        p.data.path,
        [&](int64_t line, const nlohmann::ordered_json& row) {
          const std::string source = p.data.path.string() + ":" + std::to_string(line);
          try {
            ++formats[p.data.format == "auto" ? data::detect_format(row, source) : p.data.format];
            records.push_back({.file = p.data.path, .line = line});
          } catch (const std::exception& e) {
            records.push_back({.file = p.data.path, .line = line, .outcome = Outcome::Bad, .problem = e.what()});
          }
        },
        [&](int64_t line, const std::string& message) {
          records.push_back({.file = p.data.path, .line = line, .outcome = Outcome::Bad,
                             .problem = p.data.path.string() + ":" + std::to_string(line) + ": " + message});
        });
  } catch (const std::exception& e) {
    report.problems.push_back(e.what());
  }
  nlohmann::ordered_json section = {{"path", p.data.path.string()}, {"rows", records.size()}, {"formats", formats}};
  section["rows_left_out"] = report_bad_rows(records, p.data.skip_bad_rows, report);
  section["note"] = "not tokenized: the tokenizer did not load";
  report.sections["data"] = section;
}

void check_steps(const FinetuneParams& p, const data::Dataset& dataset, int32_t pad_id, ValidateReport& report) {
  data::Batcher batches(dataset.train, {.batch_size = p.batch_size, .max_seq_len = p.data.max_seq_len, .packing = p.packing,
                                        .pad_to_multiple_of = 8, .pad_id = pad_id, .shuffle = true, .seed = p.seed});
  const int64_t per_epoch = batches.batches_per_epoch();
  const int64_t total_steps =
      p.max_steps > 0 ? p.max_steps : std::max<int64_t>(1, (p.epochs * per_epoch + p.grad_accum_steps - 1) / p.grad_accum_steps);
  const int64_t warmup_steps =
      p.warmup_steps > 0 ? p.warmup_steps : static_cast<int64_t>(std::ceil(p.warmup_ratio * static_cast<double>(total_steps)));
  const int64_t micro_batches = total_steps * p.grad_accum_steps;
  const auto [tokens, targets] = batches.peek_counts(micro_batches);
  // One epoch's batches as the run builds them: the real tokens among the (rows × padded length) slots.
  int64_t real = 0, slots = 0;
  for (int64_t b = 0; b < per_epoch; ++b) {
    const data::Batch batch = batches.next();
    real += batch.n_tokens;
    slots += batch.input_ids.numel();
  }
  const double efficiency = slots ? static_cast<double>(real) / static_cast<double>(slots) : 0.0;
  if (p.grad_accum_steps > per_epoch)
    report.warnings.push_back(fmt::format("train.grad_accum_steps {} is more micro-batches than an epoch has ({}): every optimizer "
                                          "step goes through the data more than once", p.grad_accum_steps, per_epoch));
  if (warmup_steps >= total_steps)
    report.warnings.push_back(fmt::format("train.warmup_steps: the warmup ({} steps) is as long as the run ({} steps): the learning "
                                          "rate never reaches train.lr's schedule", warmup_steps, total_steps));
  report.sections["steps"] = {{"batches_per_epoch", per_epoch},
                              {"optimizer_steps", total_steps},
                              {"grad_accum_steps", p.grad_accum_steps},
                              {"micro_batches", micro_batches},
                              {"epochs", static_cast<double>(micro_batches) / static_cast<double>(per_epoch)},
                              {"warmup_steps", warmup_steps},
                              {"tokens", tokens},
                              {"trained_tokens", targets}};
  report.sections["packing"] = {{"enabled", p.packing},
                                {"rows_per_epoch", batches.rows()},
                                {"real_tokens", real},
                                {"token_slots", slots},
                                {"efficiency", efficiency},
                                {"padding_fraction", 1.0 - efficiency}};
}

}  // namespace llmtune::pipelines
