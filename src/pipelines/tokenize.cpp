// The tokenize job: load the tokenizer, then encode the text, or select the row, render it with the
// data pipeline's renderer and truncate it as finetune would.
#include "llmtune/pipelines/tokenize.h"

#include <spdlog/spdlog.h>

#include <filesystem>

#include "llmtune/data/dataset.h"
#include "llmtune/io/hf_dir.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"

namespace llmtune::pipelines {

TokenizeResult run_tokenize(const TokenizeParams& p) {
  if (p.text.empty() == p.data.empty()) throw UsageError("tokenize needs exactly one of --text or --data");
  if (!p.text.empty()) {
    for (const auto& [given, flag] : {std::pair{p.row.has_value(), "--row"}, {p.format.has_value(), "--format"},
                                      {p.chat_template.has_value(), "--template"}, {p.train_on.has_value(), "--train-on"},
                                      {p.max_seq_len.has_value(), "--max-seq-len"}})
      if (given) throw UsageError(std::string(flag) + " applies to a dataset row (--data), not to --text");
  } else if (!p.add_special_tokens) {
    throw UsageError("--no-special-tokens applies to --text; a row's special tokens come from its template");
  }
  if (p.max_seq_len && *p.max_seq_len <= 0) throw UsageError("--max-seq-len must be positive");
  if (p.row && *p.row <= 0) throw UsageError("--row is 1-based: it must be positive");

  if (!p.data.empty() && std::filesystem::is_directory(p.data))
    throw UsageError("--data " + p.data + ": is a directory, not a data file (give a .jsonl or .json file)");

  auto tok = tokenizer::load_tokenizer(io::resolve_model_dir(p.model));
  TokenizeResult r;
  auto describe = [&] {
    for (int32_t id : r.ids) {
      r.pieces.push_back(tok->id_to_piece(id));
      r.special.push_back(tok->is_special(id));
    }
  };
  if (!p.text.empty()) {
    r.text = p.text;
    r.ids = tok->encode(p.text, p.add_special_tokens);
    describe();
    return r;
  }

  data::DataParams params;
  params.path = p.data;
  params.format = p.format.value_or("auto");
  params.chat_template = p.chat_template.value_or("auto");
  params.train_on = p.train_on.value_or("assistant");
  const int64_t want = p.row.value_or(1);
  int64_t seen = 0;
  std::optional<data::RenderedRow> rendered;
  data::read_rows(p.data, [&](int64_t line, const nlohmann::ordered_json& row) {
    if (++seen != want) return;
    rendered = data::render_row(row, params, *tok, p.data + ":" + std::to_string(line));
  });
  if (!rendered)
    throw DataError(p.data + ": has " + std::to_string(seen) + " row(s); --row " + std::to_string(want) + " is past the end");
  data::Example& ex = rendered->example;
  if (p.max_seq_len && static_cast<int64_t>(ex.input_ids.size()) > *p.max_seq_len) {
    r.truncated_tokens = static_cast<int64_t>(ex.input_ids.size()) - *p.max_seq_len;
    ex.input_ids.resize(*p.max_seq_len);
    ex.labels.resize(*p.max_seq_len);
    spdlog::info("tokenize: the row is truncated to max_seq_len={} ({} token(s) dropped)", *p.max_seq_len, r.truncated_tokens);
  }
  r.is_row = true;
  r.text = std::move(rendered->text);
  r.trained_spans = std::move(rendered->trained_spans);
  r.ids = std::move(ex.input_ids);
  r.labels = std::move(ex.labels);
  for (int32_t l : r.labels) r.trained_tokens += l != data::kIgnoreIndex;
  describe();
  return r;
}

}  // namespace llmtune::pipelines
