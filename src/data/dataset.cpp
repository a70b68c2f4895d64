// load_dataset: read every row, render and tokenize it, truncate or drop long rows, split off the
// validation set, and say what happened in one log line.
#include <algorithm>
#include <cmath>

#include "llmtune/data/batcher.h"
#include "llmtune/data/dataset.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "render.h"

namespace llmtune::data {
namespace {

constexpr int kBadRowsShown = 3;  // the first few skipped rows are logged with their reason

bool has_trained(const Example& ex) {
  return std::any_of(ex.labels.begin(), ex.labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
}

void check_params(const DataParams& p) {
  check_format_name(p.format);
  if (p.train_on != "assistant" && p.train_on != "all")
    throw DataError("unknown train_on \"" + p.train_on + "\": use assistant or all");
  if (p.truncation != "truncate" && p.truncation != "drop")
    throw DataError("unknown truncation \"" + p.truncation + "\": use truncate or drop");
  if (p.max_seq_len < 2) throw DataError("max_seq_len must be at least 2, got " + std::to_string(p.max_seq_len));
  if (!(p.val_fraction >= 0.0 && p.val_fraction < 1.0))
    throw DataError("val_fraction must be in [0, 1), got " + std::to_string(p.val_fraction));
  if (p.val_fraction > 0.0 && !p.val_path.empty())
    throw DataError("give either val_fraction or a validation file (val_path), not both");
}

}  // namespace

Dataset load_dataset(const DataParams& params, const tokenizer::Tokenizer& tok, std::vector<RowRecord>* records) {
  check_params(params);
  Dataset ds;
  DataStats& st = ds.stats;
  RowRenderer renderer(params, tok);
  std::string format = params.format;
  int64_t bad_shown = 0;

  auto skip = [&](const std::string& message) {
    ++st.skipped_bad;
    if (bad_shown++ < kBadRowsShown) spdlog::warn("data: skipping bad row: {}", message);
  };
  using Outcome = RowRecord::Outcome;
  auto record = [&](const std::filesystem::path& file, int64_t line, const Example* ex, Outcome outcome, std::string problem = "") {
    if (!records) return;
    RowRecord r{.file = file, .line = line, .outcome = outcome, .problem = std::move(problem)};
    if (ex) {
      r.tokens = static_cast<int64_t>(ex->input_ids.size());
      r.trained = std::count_if(ex->labels.begin(), ex->labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
    }
    records->push_back(std::move(r));
  };
  auto read_file = [&](const std::filesystem::path& path, std::vector<Example>& out) {
    const std::string file = path.string();
    auto on_bad = [&](int64_t line, const std::string& message) {
      ++st.rows;
      record(path, line, nullptr, Outcome::Bad, file + ":" + std::to_string(line) + ": " + message);
      skip(file + ":" + std::to_string(line) + ": " + message);
    };
    read_rows(
        path,
        [&](int64_t line, const nlohmann::ordered_json& row) {
          ++st.rows;
          const std::string source = file + ":" + std::to_string(line);
          Example ex;
          bool rendered = false;
          try {
            if (format == "auto") format = detect_format(row, source);
            ex = std::move(renderer.render(row, format, source).example);
            ex.line = line;
            rendered = true;
            if (!has_trained(ex))
              throw DataError(source + ": the row has no token to train on (train_on=" + params.train_on +
                              (params.train_on == "assistant" ? ": it has no assistant message" : "") +
                              "); add one, set train_on=all, or skip_bad_rows=true");
          } catch (const DataError& e) {
            record(path, line, rendered ? &ex : nullptr, rendered ? Outcome::NothingTrained : Outcome::Bad, e.what());
            if (!params.skip_bad_rows) throw;
            skip(e.what());
            return;
          }
          if (static_cast<int64_t>(ex.input_ids.size()) > params.max_seq_len) {
            const Example full = records ? ex : Example();
            if (params.truncation == "drop") {
              record(path, line, &full, Outcome::DroppedTooLong);
              ++st.dropped;
              return;
            }
            ++st.truncated;
            ex.input_ids.resize(params.max_seq_len);
            ex.labels.resize(params.max_seq_len);
            if (!has_trained(ex)) {  // everything trained was cut off
              record(path, line, &full, Outcome::DroppedNothingLeft);
              ++st.dropped;
              return;
            }
            record(path, line, &full, Outcome::Truncated);
          } else {
            record(path, line, &ex, Outcome::Kept);
          }
          out.push_back(std::move(ex));
        },
        params.skip_bad_rows ? std::function<void(int64_t, const std::string&)>(on_bad) : nullptr);
  };

  read_file(params.path, ds.train);
  const int64_t rows_in_train_file = st.rows;
  if (ds.train.empty())
    throw DataError(params.path.string() + ": no usable rows (" + std::to_string(st.rows) + " read, " +
                    std::to_string(st.skipped_bad) + " skipped as bad, " + std::to_string(st.dropped) +
                    " dropped as too long or with nothing left to train): the dataset is empty");
  if (!params.val_path.empty()) {
    read_file(params.val_path, ds.val);
    if (ds.val.empty())
      throw DataError(params.val_path.string() + ": the validation file has no usable rows");
  } else if (params.val_fraction > 0.0) {
    const int64_t n = static_cast<int64_t>(ds.train.size());
    int64_t n_val = std::max<int64_t>(1, std::llround(params.val_fraction * n));
    if (n_val >= n)
      throw DataError(params.path.string() + ": val_fraction " + std::to_string(params.val_fraction) + " of " +
                      std::to_string(n) + " examples leaves none to train on; lower it or add rows");
    std::vector<int64_t> perm = seeded_permutation(n, params.seed, /*stream=*/0x76616c);  // "val"
    std::vector<char> is_val(n, 0);
    for (int64_t i = 0; i < n_val; ++i) is_val[perm[i]] = 1;
    std::vector<Example> train;
    for (int64_t i = 0; i < n; ++i) (is_val[i] ? ds.val : train).push_back(std::move(ds.train[i]));
    ds.train = std::move(train);
  }
  for (const auto* set : {&ds.train, &ds.val})
    for (const auto& ex : *set) {
      st.tokens += static_cast<int64_t>(ex.input_ids.size());
      st.trained_tokens += std::count_if(ex.labels.begin(), ex.labels.end(), [](int32_t l) { return l != kIgnoreIndex; });
    }
  ds.format = format;
  ds.template_name = renderer.template_name().empty() ? "none" : renderer.template_name();
  if (params.chat_template != "auto" && (format == "completion" || format == "text"))
    spdlog::warn("data: chat_template {} is not used: {} rows are tokenized as raw text", params.chat_template, format);
  spdlog::info("data: {} rows ({} in {}), format {}, template {}: {} train + {} val examples, {} tokens ({} trained); "
               "skipped {} bad rows, truncated {} and dropped {} (max_seq_len {}, truncation {})",
               st.rows, rows_in_train_file, params.path.string(), ds.format, ds.template_name, ds.train.size(),
               ds.val.size(), st.tokens, st.trained_tokens, st.skipped_bad, st.truncated, st.dropped, params.max_seq_len,
               params.truncation);
  return ds;
}

void check_token_ids(const std::vector<Example>& examples, int64_t vocab_size, const std::filesystem::path& source) {
  for (const auto& ex : examples)
    for (int32_t id : ex.input_ids)
      if (id < 0 || id >= vocab_size)
        throw DataError(source.string() + ":" + std::to_string(ex.line) + ": token id " + std::to_string(id) +
                        " is outside the model's vocabulary (" + std::to_string(vocab_size) +
                        "): the tokenizer and the model do not match");
}

}  // namespace llmtune::data
