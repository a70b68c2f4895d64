// Packing, padding and the per-epoch shuffle. Rows are packed once; each epoch permutes the rows
// with a generator seeded from (seed, epoch), so batches_per_epoch is fixed and seek() is exact.
#include "llmtune/data/batcher.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <random>

#include "llmtune/util/error.h"

namespace llmtune::data {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, bound] by rejection: exact, and the same on every standard library.
uint64_t uniform_upto(std::mt19937_64& rng, uint64_t bound) {
  if (bound == 0) return 0;
  const uint64_t range = bound + 1;
  if (range == 0) return rng();  // bound is the maximum value
  const uint64_t limit = UINT64_MAX - (UINT64_MAX % range + 1) % range;
  uint64_t x;
  do x = rng();
  while (x > limit);
  return x % range;
}

constexpr uint64_t kPackStream = 0x7061636b;  // "pack"

}  // namespace

std::vector<int64_t> seeded_permutation(int64_t n, uint64_t seed, uint64_t stream) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(stream)));
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[uniform_upto(rng, static_cast<uint64_t>(i))]);
  return p;
}

Batcher::Batcher(std::vector<Example> examples, BatchOptions options)
    : examples_(std::move(examples)), options_(options) {
  if (examples_.empty()) throw DataError("the batcher got no examples: the dataset is empty");
  if (options_.batch_size < 1) throw DataError("batch_size must be at least 1, got " + std::to_string(options_.batch_size));
  if (options_.max_seq_len < 1) throw DataError("max_seq_len must be at least 1");
  if (options_.pad_to_multiple_of < 1) options_.pad_to_multiple_of = 1;
  const int64_t n = static_cast<int64_t>(examples_.size());
  for (int64_t i = 0; i < n; ++i) {
    const Example& ex = examples_[i];
    if (ex.input_ids.empty() || ex.input_ids.size() != ex.labels.size())
      throw DataError("example " + std::to_string(i) + " (line " + std::to_string(ex.line) +
                      ") is empty or has labels of another length than its input_ids");
    if (static_cast<int64_t>(ex.input_ids.size()) > options_.max_seq_len)
      throw DataError("example at line " + std::to_string(ex.line) + " has " + std::to_string(ex.input_ids.size()) +
                      " tokens, more than max_seq_len " + std::to_string(options_.max_seq_len) +
                      "; load the dataset with the same max_seq_len so that it is truncated or dropped");
  }
  target_offset_.assign(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t targets = 0;
    for (size_t k = 1; k < examples_[i].labels.size(); ++k) targets += examples_[i].labels[k] != kIgnoreIndex;
    target_offset_[i + 1] = target_offset_[i] + targets;
  }
  if (!options_.packing) {
    for (int64_t i = 0; i < n; ++i) rows_.push_back({i});
    return;
  }
  // Greedy packing in a seeded shuffled order: a row takes examples until the next does not fit.
  std::vector<int64_t> order = options_.shuffle ? seeded_permutation(n, options_.seed, kPackStream) : [&] {
    std::vector<int64_t> o(n);
    for (int64_t i = 0; i < n; ++i) o[i] = i;
    return o;
  }();
  int64_t used = 0;
  for (int64_t idx : order) {
    int64_t len = static_cast<int64_t>(examples_[idx].input_ids.size());
    if (rows_.empty() || used + len > options_.max_seq_len) {
      rows_.push_back({});
      used = 0;
    }
    rows_.back().push_back(idx);
    used += len;
  }
}

int64_t Batcher::batches_per_epoch() const {
  return (static_cast<int64_t>(rows_.size()) + options_.batch_size - 1) / options_.batch_size;
}

const std::vector<int64_t>& Batcher::epoch_order(int64_t epoch) const {
  if (order_epoch_ != epoch) {
    const int64_t n = static_cast<int64_t>(rows_.size());
    if (options_.shuffle) {
      order_ = seeded_permutation(n, options_.seed, static_cast<uint64_t>(epoch));
    } else {
      order_.resize(n);
      for (int64_t i = 0; i < n; ++i) order_[i] = i;
    }
    order_epoch_ = epoch;
  }
  return order_;
}

std::vector<std::vector<int64_t>> Batcher::batch_rows(int64_t epoch, int64_t batch) const {
  const auto& order = epoch_order(epoch);
  std::vector<std::vector<int64_t>> out;
  const int64_t begin = batch * options_.batch_size;
  const int64_t end = std::min<int64_t>(begin + options_.batch_size, static_cast<int64_t>(order.size()));
  for (int64_t r = begin; r < end; ++r) out.push_back(rows_[order[r]]);
  return out;
}

void Batcher::seek(Position p) {
  if (p.epoch < 0 || p.batch < 0 || p.batch >= batches_per_epoch())
    throw DataError("cannot resume the data at epoch " + std::to_string(p.epoch) + ", batch " + std::to_string(p.batch) +
                    ": an epoch has " + std::to_string(batches_per_epoch()) +
                    " batches (was the dataset or batch size changed since the checkpoint?)");
  pos_ = p;
}

std::pair<int64_t, int64_t> Batcher::peek_counts(int64_t n) const {
  int64_t tokens = 0, targets = 0;
  Position p = pos_;
  for (int64_t i = 0; i < n; ++i) {
    for (const auto& row : batch_rows(p.epoch, p.batch)) {
      for (int64_t idx : row) {
        const Example& ex = examples_[idx];
        tokens += static_cast<int64_t>(ex.input_ids.size());
        // As next(): an example's first token is never a target.
        for (size_t k = 1; k < ex.labels.size(); ++k) targets += ex.labels[k] != kIgnoreIndex;
      }
    }
    if (++p.batch == batches_per_epoch()) p = {p.epoch + 1, 0};
  }
  return {tokens, targets};
}

Batch Batcher::next() {
  std::vector<std::vector<int64_t>> rows = batch_rows(pos_.epoch, pos_.batch);
  if (++pos_.batch == batches_per_epoch()) pos_ = {pos_.epoch + 1, 0};

  const int64_t B = static_cast<int64_t>(rows.size());
  int64_t longest = 0;
  bool multi = false;
  for (const auto& row : rows) {
    int64_t len = 0;
    for (int64_t idx : row) len += static_cast<int64_t>(examples_[idx].input_ids.size());
    longest = std::max(longest, len);
    multi = multi || row.size() > 1;
  }
  const int64_t m = options_.pad_to_multiple_of;
  const int64_t T = std::max(longest, std::min((longest + m - 1) / m * m, options_.max_seq_len));

  Batch batch;
  batch.input_ids = at::empty({B, T}, at::kLong);
  batch.labels = at::empty({B, T}, at::kLong);
  batch.positions = at::zeros({B, T}, at::kLong);
  batch.input_ids.fill_(options_.pad_id);
  batch.labels.fill_(kIgnoreIndex);
  int64_t* ids = batch.input_ids.data_ptr<int64_t>();
  int64_t* labels = batch.labels.data_ptr<int64_t>();
  int64_t* pos = batch.positions.data_ptr<int64_t>();
  auto packed = multi ? std::make_shared<model::PackedSegments>() : nullptr;
  std::vector<int64_t> target_index, target_ids, target_rows;
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    if (packed) packed->lengths.emplace_back();
    for (int64_t idx : rows[b]) {
      const Example& ex = examples_[idx];
      const int64_t len = static_cast<int64_t>(ex.input_ids.size());
      int64_t row = target_offset_[idx];
      for (int64_t k = 0; k < len; ++k) {
        ids[b * T + t + k] = ex.input_ids[k];
        // The first token of an example is never a target: it would be predicted from the example before.
        labels[b * T + t + k] = k == 0 ? kIgnoreIndex : ex.labels[k];
        pos[b * T + t + k] = k;
        // In position order, as target_index below lists them.
        if (k > 0 && ex.labels[k] != kIgnoreIndex) target_rows.push_back(row++);
      }
      if (packed) packed->lengths.back().push_back(len);
      t += len;
      batch.n_tokens += len;
    }
    for (int64_t k = 1; k < T; ++k) {
      if (labels[b * T + k] == kIgnoreIndex) continue;
      target_index.push_back(b * T + k - 1);
      target_ids.push_back(labels[b * T + k]);
    }
  }
  batch.packed = packed;
  batch.n_targets = static_cast<int64_t>(target_index.size());
  batch.target_index = at::tensor(target_index, at::kLong);
  batch.target_ids = at::tensor(target_ids, at::kLong);
  batch.target_rows = at::tensor(target_rows, at::kLong);
  return batch;
}

at::Tensor block_diagonal_mask(const model::PackedSegments& packed, int64_t tokens) {
  const auto B = static_cast<int64_t>(packed.lengths.size()), T = tokens;
  at::Tensor mask = at::zeros({B, 1, T, T}, at::kBool);
  bool* m = mask.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t t = 0;
    for (int64_t len : packed.lengths[b]) {
      for (int64_t k = 0; k < len; ++k)  // row t+k sees t..t+k
        std::fill(m + (b * T + t + k) * T + t, m + (b * T + t + k) * T + t + k + 1, true);
      t += len;
    }
    for (int64_t p = t; p < T; ++p) m[(b * T + p) * T + p] = true;  // padding: itself only
  }
  return mask;
}

Batch to_device(const Batch& batch, c10::Device device) {
  if (device.is_cpu()) return batch;
  Batch out = batch;
  for (at::Tensor* t : {&out.input_ids, &out.labels, &out.positions, &out.target_index, &out.target_ids, &out.attention_mask})
    if (t->defined()) *t = t->pin_memory().to(device, /*non_blocking=*/true);
  return out;
}

void to_json(nlohmann::json& j, const Batcher::Position& p) { j = nlohmann::json{{"epoch", p.epoch}, {"batch", p.batch}}; }

void from_json(const nlohmann::json& j, Batcher::Position& p) {
  if (!j.is_object() || !j.contains("epoch") || !j.contains("batch") || !j["epoch"].is_number_integer() ||
      !j["batch"].is_number_integer())
    throw DataError("data position must be {\"epoch\": int, \"batch\": int}, got " + j.dump());
  p.epoch = j["epoch"].get<int64_t>();
  p.batch = j["batch"].get<int64_t>();
}

}  // namespace llmtune::data
