// Datasets for finetune: JSONL / JSON-array readers, the row formats (alpaca, messages, tools,
// completion, text), rendering through a chat template, and token ids with label masks computed
// from the rendered spans of each assistant message (never by searching for marker strings).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::data {

inline constexpr int32_t kIgnoreIndex = -100;

struct DataParams {
  std::filesystem::path path;           // .jsonl or .json (top-level array)
  std::string format = "auto";          // auto | alpaca | messages | tools | completion | text
  // auto (the tokenizer's own template) | alpaca | chatml | llama3 | mistral | zephyr, or a path to
  // a .jinja file.
  std::string chat_template = "auto";
  std::string train_on = "assistant";   // assistant | all
  int64_t max_seq_len = 2048;
  std::string truncation = "truncate";  // truncate | drop   (rows longer than max_seq_len)
  double val_fraction = 0.0;            // a seeded split of `path`, or:
  std::filesystem::path val_path;       // a separate validation file
  uint64_t seed = 42;
  bool skip_bad_rows = false;           // malformed/missing-field rows: skip and count instead of an error
};

// labels: unshifted (HF convention), kIgnoreIndex where not trained. line: 1-based line of the row
// in its file.
struct Example {
  std::vector<int32_t> input_ids, labels;
  int64_t line = 0;
};

struct DataStats {
  int64_t rows = 0, skipped_bad = 0, truncated = 0, dropped = 0, tokens = 0, trained_tokens = 0;
};

struct Dataset {
  std::vector<Example> train, val;
  DataStats stats;
  std::string format, template_name;
};

// What became of one row (for `llmtune validate`): its tokens and trained tokens before truncation
// (-1 when it did not render), and why it was left out. NothingTrained and Bad rows are errors
// unless skip_bad_rows; `problem` is the DataError's text.
struct RowRecord {
  enum class Outcome { Kept, Truncated, DroppedTooLong, DroppedNothingLeft, NothingTrained, Bad };
  std::filesystem::path file;
  int64_t line = 0, tokens = -1, trained = -1;
  Outcome outcome = Outcome::Kept;
  std::string problem;
};

// Reads, renders and tokenizes params.path (and params.val_path); logs the counts once. Errors
// are DataErrors naming "file:line", what is wrong and what to do. `records`, when given, receives
// one RowRecord per row read (also those read before an error).
Dataset load_dataset(const DataParams& params, const tokenizer::Tokenizer& tok, std::vector<RowRecord>* records = nullptr);

// A tokenizer that does not match the model would index past its embeddings: DataError naming
// `source`:line of the first example with a token id outside [0, vocab_size).
void check_token_ids(const std::vector<Example>& examples, int64_t vocab_size, const std::filesystem::path& source);

// One row rendered, for `llmtune tokenize --row` and tests: the text, the byte spans of it that are
// trained, and the example (not truncated). For completion/text rows the text is the raw text and
// the example adds the tokenizer's BOS/EOS around it.
struct RenderedRow {
  std::string text;
  std::vector<std::pair<size_t, size_t>> trained_spans;
  Example example;
};
// `source` is "file:line" for errors. params.format must not be "auto" here unless the row alone
// decides it (it is detected from the row's keys).
RenderedRow render_row(const nlohmann::ordered_json& row, const DataParams& params, const tokenizer::Tokenizer& tok,
                       const std::string& source);

// The format a row's keys say (alpaca, messages, tools, completion, text); DataError when none fits.
std::string detect_format(const nlohmann::ordered_json& row, const std::string& source);

// Reads a .jsonl file, or a .json file holding an array of objects: calls row(line, object) for
// each, with the 1-based line where the row starts. A malformed row is a DataError "file:line: ..."
// unless `bad` is given, which then receives (line, message) and reading goes on.
void read_rows(const std::filesystem::path& path,
               const std::function<void(int64_t, const nlohmann::ordered_json&)>& row,
               const std::function<void(int64_t, const std::string&)>& bad = nullptr);

// The named templates shipped in the binary: alpaca, chatml, llama3, mistral, zephyr.
const std::vector<std::string>& named_templates();
// The Jinja source of a named template; DataError naming the valid names otherwise.
const std::string& named_template_source(const std::string& name);

}  // namespace llmtune::data
