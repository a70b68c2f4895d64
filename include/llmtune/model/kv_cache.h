// The KV cache for generation: per layer, preallocated K and V of (B, H_kv, max_len, D).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace llmtune::model {

class KVCache {
 public:
  KVCache(int64_t n_layers, int64_t batch, int64_t n_heads_kv, int64_t max_len, int64_t head_dim,
          at::TensorOptions options);

  // Number of positions already stored.
  int64_t length() const { return length_; }
  int64_t capacity() const { return max_len_; }

  // Stores k, v: (B, H_kv, T, D) for `layer` at positions [length, length + T) and returns the
  // keys/values of positions [0, length + T). Call advance(T) after the last layer.
  std::pair<at::Tensor, at::Tensor> update(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  void advance(int64_t n_tokens);
  void reset() { length_ = 0; }

 private:
  std::vector<at::Tensor> k_, v_;
  int64_t max_len_;
  int64_t length_ = 0;
};

}  // namespace llmtune::model
