// Calibration sequences: the data pipeline's readers, one token stream, seeded random windows.
#include "llmtune/pipelines/calibration.h"

#include <ATen/ops/empty.h>
#include <spdlog/spdlog.h>

#include <random>

#include "llmtune/data/dataset.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

CalibrationSet read_calibration(const CalibrationParams& p, const tokenizer::Tokenizer& tok) {
  const std::string file = p.path.string();
  if (p.samples < 1 || p.seq_len < 2) throw ConfigError("calibration: needs at least 1 sequence of at least 2 tokens");
  CalibrationSet set;
  std::vector<int32_t> stream;
  auto append = [&](const std::vector<int32_t>& ids) { stream.insert(stream.end(), ids.begin(), ids.end()); };
  if (p.path.extension() == ".txt") {
    append(tok.encode(io::read_text_file<DataError>(p.path, "the calibration file"), /*add_special_tokens=*/true));
    set.rows = 1;
  } else if (p.path.extension() == ".jsonl" || p.path.extension() == ".json") {
    data::DataParams dp;
    dp.format = p.format;
    dp.chat_template = p.chat_template;
    data::read_rows(p.path, [&](int64_t line, const nlohmann::ordered_json& row) {
      auto it = row.find("text");
      if ((p.format == "auto" || p.format == "text") && it != row.end() && it->is_string()) {
        append(tok.encode(it->get<std::string>(), true));
      } else {
        append(data::render_row(row, dp, tok, file + ":" + std::to_string(line)).example.input_ids);
      }
      ++set.rows;
    });
  } else {
    throw DataError(file + ": unsupported calibration file type (use .txt, or .jsonl / .json rows with a \"text\" field "
                           "or in a finetune format)");
  }
  set.corpus_tokens = static_cast<int64_t>(stream.size());
  if (set.corpus_tokens < p.seq_len)
    throw DataError(file + ": " + std::to_string(set.corpus_tokens) + " tokens, shorter than one calibration sequence of " +
                    std::to_string(p.seq_len) + " (lower --seq-len or give more text)");
  std::mt19937_64 rng(p.seed);
  const auto span = static_cast<uint64_t>(set.corpus_tokens - p.seq_len + 1);
  set.ids = at::empty({p.samples, p.seq_len}, at::TensorOptions().dtype(at::kLong));
  int64_t* out = set.ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < p.samples; ++i) {
    const auto start = static_cast<int64_t>(rng() % span);
    set.starts.push_back(start);
    for (int64_t t = 0; t < p.seq_len; ++t) out[i * p.seq_len + t] = stream[static_cast<size_t>(start + t)];
  }
  if (set.corpus_tokens < p.samples * p.seq_len)
    spdlog::info("calibration: {} tokens in {} for {} windows of {}: windows overlap", set.corpus_tokens, file, p.samples,
                 p.seq_len);
  return set;
}

}  // namespace llmtune::pipelines
