// Batches for training: examples greedily packed into rows of at most max_seq_len tokens (each
// row's sequence lengths carried with it instead of a dense mask, positions restarting per
// example), or one example per row with dynamic right padding. Deterministic across platforms: our own Fisher-Yates over mt19937_64.
//   B: batch size, T: padded sequence length
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "llmtune/data/dataset.h"
#include "llmtune/model/causal_lm.h"

namespace llmtune::data {

struct Batch {
  at::Tensor input_ids;       // (B, T) int64
  at::Tensor labels;          // (B, T) int64, unshifted, -100 masked (padding, untrained, first token of each packed example)
  at::Tensor positions;       // (B, T) int64, restarting at 0 for every packed example (0 on padding)
  // Packed rows (several examples in a row): the sequence lengths per row, for attention without
  // a dense mask. Null when every row holds one example (plain causal attention suffices).
  std::shared_ptr<const model::PackedSegments> packed;
  at::Tensor attention_mask;  // undefined: set only by callers that want a dense mask (block_diagonal_mask)
  // The trained targets, found on the host: target_index (M,) int64 indexes the flattened (B·T)
  // positions whose next token is trained, target_ids (M,) int64 are those next tokens.
  at::Tensor target_index, target_ids;
  // Each trained target's number when the targets of all examples are counted in example order
  // (example 0's first, then example 1's, ...): the row a teacher cache stores for it. (M,) int64, on the host.
  at::Tensor target_rows;
  int64_t n_tokens = 0;       // non-padding tokens
  int64_t n_targets = 0;      // count of labels[:, 1:] != -100 (the tokens the loss averages over), = M
};

// The (B, 1, T, T) bool block-diagonal causal mask the packed sequence lengths describe (padding
// attends to itself only): the dense equivalent of Batch::packed, for tests and references.
at::Tensor block_diagonal_mask(const model::PackedSegments& packed, int64_t tokens);

// The batch's tensors on `device`: from pinned memory without blocking when it is a GPU; the same
// batch when it is the CPU.
Batch to_device(const Batch& batch, c10::Device device);

struct BatchOptions {
  int64_t batch_size = 1;
  int64_t max_seq_len = 2048;
  bool packing = true;
  int64_t pad_to_multiple_of = 8;
  int32_t pad_id = 0;
  bool shuffle = true;
  uint64_t seed = 42;
};

class Batcher {
 public:
  // Throws DataError when `examples` is empty or one is longer than max_seq_len.
  Batcher(std::vector<Example> examples, BatchOptions options);

  int64_t batches_per_epoch() const;  // fixed across epochs (the last batch of an epoch may be smaller)
  int64_t rows() const { return static_cast<int64_t>(rows_.size()); }  // packed rows (= examples when not packing)
  Batch next();                       // continues into the next epoch (new seeded shuffle) after the last batch

  struct Position {
    int64_t epoch = 0, batch = 0;
    bool operator==(const Position&) const = default;
  };
  Position position() const { return pos_; }
  // Resume: the batches after seek are exactly those an uninterrupted run would produce.
  void seek(Position p);

  // The non-padding tokens and trained targets of the next `n` batches, without building them or
  // moving the position (gradient accumulation normalizes by a step's targets before its first
  // forward, and streams its micro-batches one at a time).
  std::pair<int64_t, int64_t> peek_counts(int64_t n) const;

  // Trained targets over all examples (the number of teacher-cache rows).
  int64_t total_targets() const { return target_offset_.back(); }

  // The example indices of each batch row of batch `batch` of `epoch` (for tests and logs).
  std::vector<std::vector<int64_t>> batch_rows(int64_t epoch, int64_t batch) const;

 private:
  const std::vector<int64_t>& epoch_order(int64_t epoch) const;

  std::vector<Example> examples_;
  BatchOptions options_;
  std::vector<std::vector<int64_t>> rows_;  // example indices per row
  std::vector<int64_t> target_offset_;      // trained targets of the examples before each (Batch::target_rows)
  Position pos_;
  mutable int64_t order_epoch_ = -1;
  mutable std::vector<int64_t> order_;  // row permutation of order_epoch_
};

void to_json(nlohmann::json& j, const Batcher::Position& p);
void from_json(const nlohmann::json& j, Batcher::Position& p);

// Fisher-Yates over mt19937_64 with rejection sampling (no std::uniform_int_distribution, whose
// algorithm differs between standard libraries): the same permutation on every platform.
std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream);

}  // namespace llmtune::data
