// `llmtune tokenize`: how a text is tokenized (ids and pieces), or how one dataset row is: rendered
// as finetune renders it, with its trained spans, truncated as finetune would, and every label.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::pipelines {

struct TokenizeParams {
  std::string model;  // directory or Hugging Face cache repo id
  // Exactly one of: a text, or a .jsonl/.json dataset whose row `row` is shown.
  std::string text;
  std::string data;
  bool add_special_tokens = true;  // text only: BOS/EOS as the tokenizer adds them
  // Rows only (given with a text, they are refused: they would do nothing).
  std::optional<int64_t> row;                                // 1-based [1]
  std::optional<std::string> format, chat_template, train_on;  // as finetune's data.* [auto, auto, assistant]
  std::optional<int64_t> max_seq_len;                          // truncate as finetune would [no limit]
};

struct TokenizeResult {
  bool is_row = false;
  std::string text;  // the text, or the row rendered through its template
  std::vector<int32_t> ids;
  std::vector<std::string> pieces;  // per id, as the vocabulary spells it
  std::vector<bool> special;        // per id
  // Rows: the trained character spans of `text`, the label of every token (-100: not trained).
  std::vector<std::pair<size_t, size_t>> trained_spans;
  std::vector<int32_t> labels;
  int64_t trained_tokens = 0;
  int64_t truncated_tokens = 0;  // dropped by max_seq_len
};

TokenizeResult run_tokenize(const TokenizeParams& params);

}  // namespace llmtune::pipelines
