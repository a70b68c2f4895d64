// Continuous batching for `llmtune serve`: the decode steps of up to `rows` requests run as one
// forward pass over a shared KV cache. A request joins between steps: its prompt is prefilled alone
// (batch 1) and its keys/values copied into a free row; a request that ends frees its row at once.
// The cache grows and shrinks by powers of two with the number of requests, dropping dead positions,
// and a lone request decodes exactly as generate() does (no mask, no padding).
// Rows hold different lengths: each has its own positions, and a mask (rows, 1, 1, S) lets a row
// attend only to its own keys, so every row computes what a batch-1 generation would.
#pragma once

#include <ATen/core/Generator.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"
#include "text_stream.h"

namespace llmtune::serve {

class Batch {
 public:
  // Why `model` cannot be batched this way ("" when it can): RoPE that depends on the sequence
  // length, or sliding-window layers (one mask serves every layer).
  static std::string unsupported_reason(const model::CausalLM& model);

  Batch(const model::CausalLM& model, const tokenizer::Tokenizer& tok, Metrics& metrics, int64_t rows);

  int64_t active() const { return active_; }
  bool has_free_row() const { return active_ < max_rows_; }
  // Whether the job's prompt and tokens fit in the shared cache beside the running rows.
  bool fits(const GenerationJob& job) const;
  // Prefills the job into a free row and emits its first token (the job may end there).
  void admit(const JobPtr& job, const std::string& model_name);
  // One decode step for every active row.
  void step();
  // Ends every active row with an error (a failed forward pass).
  void fail_all(const std::string& message);

 private:
  struct Row {
    JobPtr job;
    std::unique_ptr<TextStream> stream;
    at::Generator generator;
    std::vector<int64_t> history;  // prompt + generated, for the repetition penalty
    int64_t generated = 0;
    int64_t position = 0;  // the position of the next input token
    int64_t next = 0;      // the next input token
    std::string model;     // metrics label
    std::chrono::steady_clock::time_point last;
  };
  // Records a chosen token; returns true when the row ended (and freed it).
  bool emit(size_t r, int64_t token);
  void finish(size_t r, const std::string& reason);
  // Moves the active rows into a cache of `n_rows` rows (rows 0..active-1), dropping the cached
  // positions no active row uses: the forward pass then runs over live rows and keys only.
  void rebuild(int64_t n_rows);
  // Positions the active rows' keys occupy (the cache length after a rebuild).
  int64_t live_positions() const;

  const model::CausalLM& model_;
  const tokenizer::Tokenizer& tok_;
  Metrics& metrics_;
  std::vector<std::unique_ptr<Row>> rows_;  // nullptr: free
  int64_t active_ = 0;
  int64_t max_rows_ = 1;
  int64_t capacity_ = 0;
  model::KVCache cache_;
  at::Tensor key_pos_;  // (rows, capacity) int64 on the CPU: each cached key's position in its row, -1 elsewhere
};

}  // namespace llmtune::serve
