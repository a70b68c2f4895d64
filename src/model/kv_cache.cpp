// Preallocated KV cache: writes are slice copies, reads are views; nothing is concatenated.
#include "llmtune/model/kv_cache.h"

#include <ATen/ops/empty.h>

#include "llmtune/util/error.h"

namespace llmtune::model {

KVCache::KVCache(int64_t n_layers, int64_t batch, int64_t n_heads_kv, int64_t max_len, int64_t head_dim,
                 at::TensorOptions options)
    : max_len_(max_len) {
  for (int64_t i = 0; i < n_layers; ++i) {
    k_.push_back(at::empty({batch, n_heads_kv, max_len, head_dim}, options));
    v_.push_back(at::empty({batch, n_heads_kv, max_len, head_dim}, options));
  }
}

std::pair<at::Tensor, at::Tensor> KVCache::update(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = k.size(2);
  if (length_ + t > max_len_)
    throw Error("KV cache full: " + std::to_string(length_ + t) + " positions > capacity " + std::to_string(max_len_) +
                " (lower --max-new-tokens or the prompt length)");
  k_[layer].narrow(2, length_, t).copy_(k);
  v_[layer].narrow(2, length_, t).copy_(v);
  return {k_[layer].narrow(2, 0, length_ + t), v_[layer].narrow(2, 0, length_ + t)};
}

void KVCache::advance(int64_t n_tokens) { length_ += n_tokens; }

}  // namespace llmtune::model
