// Calibration sequences for pruning (and GPTQ): a text corpus read as finetune and eval read data,
// tokenized into one stream, and N windows of T tokens cut from it at seeded random starts.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "llmtune/tokenizer/tokenizer.h"

namespace llmtune::pipelines {

struct CalibrationParams {
  // .txt: the whole file is one text. .jsonl / .json: rows with a "text" field are that text; rows
  // in finetune's other formats (alpaca, messages, completion, tools) are rendered as finetune
  // renders them (format, chat_template as finetune's data.format, data.template).
  std::filesystem::path path;
  std::string format = "auto", chat_template = "auto";
  int64_t samples = 128;  // N
  int64_t seq_len = 512;  // T
  uint64_t seed = 42;
};

struct CalibrationSet {
  at::Tensor ids;               // (N, T) int64, on the CPU
  std::vector<int64_t> starts;  // where each window starts in the stream
  int64_t corpus_tokens = 0;    // the whole stream's length
  int64_t rows = 0;             // texts read (1 for .txt)
};

// Each text is encoded with the tokenizer's special tokens (BOS, as eval does) and the texts are
// concatenated in file order. Window i starts at r_i mod (L − T + 1), r_i the i-th draw of a
// 64-bit Mersenne Twister (std::mt19937_64) seeded with `seed`: random windows of one token stream,
// as Wanda's and SparseGPT's WikiText-2 loaders draw them; windows may overlap. DataError naming
// the file when it holds fewer than T tokens (not one whole sequence).
CalibrationSet read_calibration(const CalibrationParams& params, const tokenizer::Tokenizer& tok);

}  // namespace llmtune::pipelines
