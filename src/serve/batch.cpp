// Continuous batching (see batch.h). Shapes: R rows, S cached positions, V vocabulary.
#include "batch.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "llmtune/model/rope.h"
#include "sampling.h"

namespace llmtune::serve {
namespace {

double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// The shared cache holds every row's keys plus the gaps other rows' prompts leave: twice the context
// (so a full-length request fits beside others), within 32768 positions but never below the context.
int64_t cache_positions(const model::ModelConfig& c) {
  return std::max(c.max_position_embeddings, std::min<int64_t>(2 * c.max_position_embeddings, 32768));
}

}  // namespace

std::string Batch::unsupported_reason(const model::CausalLM& model) {
  const model::ModelConfig& c = model.config();
  if (model::rope_depends_on_length(c.rope) || model.rope_switch_length() > 0)
    return "its RoPE (" + c.rope.type + ") depends on the sequence length";
  for (int64_t w : c.sliding_window_per_layer)
    if (w > 0 && w < c.max_position_embeddings) return "it has sliding-window attention layers";
  return "";
}

Batch::Batch(const model::CausalLM& model, const tokenizer::Tokenizer& tok, Metrics& metrics, int64_t rows)
    : model_(model),
      tok_(tok),
      metrics_(metrics),
      rows_(1),
      max_rows_(rows),
      capacity_(cache_positions(model.config())),
      cache_(model.make_cache(1, cache_positions(model.config()))),
      key_pos_(at::full({1, cache_positions(model.config())}, -1, at::TensorOptions().dtype(at::kLong))) {}

int64_t Batch::live_positions() const {
  if (active_ == 0 || cache_.length() == 0) return 0;
  return key_pos_.narrow(1, 0, cache_.length()).ge(0).any(0).sum().item<int64_t>();
}

void Batch::rebuild(int64_t n_rows) {
  const model::ModelConfig& c = model_.config();
  std::vector<int64_t> keep;
  for (size_t r = 0; r < rows_.size(); ++r)
    if (rows_[r]) keep.push_back(static_cast<int64_t>(r));
  model::KVCache fresh = model_.make_cache(n_rows, capacity_);
  at::Tensor positions = at::full({n_rows, capacity_}, -1, key_pos_.options());
  const int64_t length = cache_.length();
  if (!keep.empty() && length > 0) {
    const at::Tensor rows = at::tensor(keep, key_pos_.options());
    const at::Tensor old_pos = key_pos_.index_select(0, rows).narrow(1, 0, length);  // (A, L)
    const at::Tensor cols = old_pos.ge(0).any(0).nonzero().squeeze(1);               // (L',)
    const int64_t live = cols.size(0);
    const auto a = static_cast<int64_t>(keep.size());
    const at::Tensor rows_dev = rows.to(model_.device()), cols_dev = cols.to(model_.device());
    const at::Tensor none = at::empty({static_cast<int64_t>(rows_.size()), c.n_heads_kv, 0, c.head_dim},
                                      at::TensorOptions().dtype(model_.dtype()).device(model_.device()));
    for (int64_t layer = 0; layer < c.n_layers; ++layer) {
      auto [k, v] = cache_.update(layer, none, none);  // views (R, H_kv, L, D)
      at::Tensor k2 = at::zeros({n_rows, c.n_heads_kv, live, c.head_dim}, k.options());
      at::Tensor v2 = at::zeros_like(k2);
      k2.narrow(0, 0, a).copy_(k.index_select(0, rows_dev).index_select(2, cols_dev));
      v2.narrow(0, 0, a).copy_(v.index_select(0, rows_dev).index_select(2, cols_dev));
      fresh.update(layer, k2, v2);
    }
    fresh.advance(live);
    positions.narrow(0, 0, a).narrow(1, 0, live).copy_(old_pos.index_select(1, cols));
  }
  std::vector<std::unique_ptr<Row>> moved(static_cast<size_t>(n_rows));
  for (size_t i = 0; i < keep.size(); ++i) moved[i] = std::move(rows_[static_cast<size_t>(keep[i])]);
  rows_ = std::move(moved);
  cache_ = std::move(fresh);
  key_pos_ = positions;
}

// Each later step writes one position for every row, so the cache must hold, past the new prompt, as
// many steps as the longest remaining request needs (after a rebuild drops the dead positions).
bool Batch::fits(const GenerationJob& job) const {
  int64_t longest = job.sampling.max_new_tokens;
  for (const auto& row : rows_)
    if (row) longest = std::max(longest, row->job->sampling.max_new_tokens - row->generated);
  return live_positions() + static_cast<int64_t>(job.prompt.size()) + longest <= capacity_;
}

void Batch::admit(const JobPtr& job, const std::string& model_name) {
  if (active_ == 0) {  // an empty batch starts over with one row
    if (rows_.size() != 1) rebuild(1);
    cache_.reset();
    key_pos_.fill_(-1);
  } else if (active_ == static_cast<int64_t>(rows_.size())) {
    rebuild(std::min(max_rows_, 2 * active_));
  }
  int64_t longest = job->sampling.max_new_tokens;
  for (const auto& row : rows_)
    if (row) longest = std::max(longest, row->job->sampling.max_new_tokens - row->generated);
  if (cache_.length() + static_cast<int64_t>(job->prompt.size()) + longest > capacity_)
    rebuild(static_cast<int64_t>(rows_.size()));  // drop the dead positions (fits() counted without them)
  const size_t r = static_cast<size_t>(std::find(rows_.begin(), rows_.end(), nullptr) - rows_.begin());
  const auto n = static_cast<int64_t>(job->prompt.size());
  const model::ModelConfig& c = model_.config();
  // The prompt alone, batch 1, as generate() runs it.
  model::KVCache one = model_.make_cache(1, n);
  model::ForwardOptions options;
  options.cache = &one;
  at::Tensor ids = at::tensor(job->prompt, at::TensorOptions().dtype(at::kLong)).unsqueeze(0);
  at::Tensor hidden = model_.forward_hidden(ids, options);
  at::Tensor logits = model_.logits(hidden.select(1, n - 1)).squeeze(0);
  // Its keys/values into row r at [length, length + n); the other rows get zeros there, masked out.
  const at::Tensor none = at::empty({1, c.n_heads_kv, 0, c.head_dim}, logits.options().dtype(model_.dtype()));
  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    auto [k, v] = one.update(layer, none, none);  // views of the n cached positions, (1, H_kv, n, D)
    at::Tensor kb = at::zeros({static_cast<int64_t>(rows_.size()), c.n_heads_kv, n, c.head_dim}, k.options());
    at::Tensor vb = at::zeros_like(kb);
    kb.select(0, static_cast<int64_t>(r)).copy_(k.select(0, 0));
    vb.select(0, static_cast<int64_t>(r)).copy_(v.select(0, 0));
    cache_.update(layer, kb, vb);
  }
  key_pos_.select(0, static_cast<int64_t>(r)).narrow(0, cache_.length(), n).copy_(at::arange(n, key_pos_.options()));
  cache_.advance(n);

  auto row = std::make_unique<Row>();
  row->job = job;
  row->stream = std::make_unique<TextStream>(tok_, job->stop);
  row->generator = at::make_generator<at::CPUGeneratorImpl>(job->sampling.seed);
  row->history = job->prompt;
  row->position = n;
  row->model = model_name;
  row->last = job->arrived;
  rows_[r] = std::move(row);
  ++active_;
  Row& me = *rows_[r];
  const int64_t token = pick_token(logits, me.history, *job, me.generator);
  if (!emit(r, token)) me.next = token;
}

void Batch::step() {
  if (active_ == 0) return;
  const auto n_rows = static_cast<int64_t>(rows_.size());
  const int64_t at_pos = cache_.length();  // where this step's keys go
  std::vector<int64_t> ids(n_rows, 0), positions(n_rows, 0);
  for (int64_t r = 0; r < n_rows; ++r) {
    if (!rows_[r]) continue;
    ids[r] = rows_[r]->next;
    positions[r] = rows_[r]->position;
    key_pos_[r][at_pos] = rows_[r]->position;
  }
  model::ForwardOptions options;
  options.cache = &cache_;
  // A lone row with no gap before it is a plain batch-1 decode step (generate()'s): no mask needed.
  if (!(n_rows == 1 && positions[0] == at_pos)) {
    // (R, 1, 1, S): a row sees its own keys; a free row sees only this step's (garbage, but no NaN).
    at::Tensor allowed = key_pos_.narrow(1, 0, at_pos + 1).ge(0);
    for (int64_t r = 0; r < n_rows; ++r)
      if (!rows_[r]) allowed[r][at_pos] = true;
    options.positions = at::tensor(positions, at::TensorOptions().dtype(at::kLong)).unsqueeze(1);
    options.attention_mask = allowed.view({n_rows, 1, 1, at_pos + 1}).to(model_.device());
  }
  at::Tensor x = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(1).to(model_.device());
  metrics_.count_decode_step(active_);
  at::Tensor hidden = model_.forward_hidden(x, options);     // (R, 1, H)
  at::Tensor logits = model_.logits(hidden.select(1, 0));    // (R, V)
  for (int64_t r = 0; r < n_rows; ++r) {
    if (!rows_[r]) continue;
    Row& row = *rows_[r];
    ++row.position;
    const int64_t token = pick_token(logits[r], row.history, *row.job, row.generator);
    if (!emit(static_cast<size_t>(r), token)) row.next = token;
  }
  // Half the rows idle: a smaller cache (and forward pass) for the rest.
  if (active_ > 0 && 2 * active_ <= n_rows) {
    int64_t target = 1;
    while (target < active_) target *= 2;
    rebuild(target);
  }
}

bool Batch::emit(size_t r, int64_t token) {
  Row& row = *rows_[r];
  const auto now = std::chrono::steady_clock::now();
  if (row.generated == 0) metrics_.observe_time_to_first_token(row.model, seconds_between(row.last, now));
  else metrics_.observe_inter_token_latency(row.model, seconds_between(row.last, now));
  row.last = now;
  ++row.generated;
  row.history.push_back(token);
  row.job->publish(row.stream->push(token), row.generated);
  const auto& stop_ids = row.job->sampling.stop_ids;
  const bool is_stop = std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
  if (is_stop || row.stream->stopped() || row.job->cancelled) finish(r, "stop");
  else if (row.generated >= row.job->sampling.max_new_tokens) finish(r, "length");
  else return false;
  return true;
}

void Batch::finish(size_t r, const std::string& reason) {
  Row& row = *rows_[r];
  metrics_.count_tokens(row.model, static_cast<int64_t>(row.job->prompt.size()), row.generated);
  metrics_.observe_request_latency(row.model, seconds_between(row.job->arrived, std::chrono::steady_clock::now()));
  row.job->finish(row.stream->rest(), reason, row.generated);
  key_pos_.select(0, static_cast<int64_t>(r)).fill_(-1);
  rows_[r].reset();
  --active_;
}

void Batch::fail_all(const std::string& message) {
  for (size_t r = 0; r < rows_.size(); ++r) {
    if (!rows_[r]) continue;
    rows_[r]->job->fail(500, message);
    key_pos_.select(0, static_cast<int64_t>(r)).fill_(-1);
    rows_[r].reset();
    --active_;
  }
}

}  // namespace llmtune::serve
