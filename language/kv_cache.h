// Key/value cache for incremental decoding: one preallocated (B, Hkv, capacity, head_dim) buffer per layer,
// filled left to right. All layers of one forward write the same slots, then advance() moves the cursor.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace mole {

class KVCache {
 public:
  KVCache(int64_t n_layers, int64_t batch, int64_t n_kv_heads, int64_t head_dim, int64_t capacity,
          const torch::TensorOptions& options);

  // Writes k, v (B, Hkv, T, head_dim) at [length, length+T) of `layer` and returns the keys and values of
  // [0, length+T) (views, no copy). Throws when capacity would be exceeded.
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v);
  void advance(int64_t n_tokens);  // after every layer appended n_tokens
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }

 private:
  std::vector<torch::Tensor> keys_, values_;
  int64_t length_ = 0, capacity_ = 0;
};

}  // namespace mole
