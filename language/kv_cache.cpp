#include "language/kv_cache.h"

#include <torch/torch.h>

namespace mole {

KVCache::KVCache(int64_t n_layers, int64_t batch, int64_t n_kv_heads, int64_t head_dim, int64_t capacity,
                 const torch::TensorOptions& options)
    : capacity_(capacity) {
  for (int64_t i = 0; i < n_layers; ++i) {
    keys_.push_back(torch::zeros({batch, n_kv_heads, capacity, head_dim}, options));
    values_.push_back(torch::zeros({batch, n_kv_heads, capacity, head_dim}, options));
  }
}

std::pair<torch::Tensor, torch::Tensor> KVCache::append(int64_t layer, const torch::Tensor& k,
                                                        const torch::Tensor& v) {
  TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(keys_.size()), "KVCache: no layer ", layer);
  int64_t n = k.size(2);
  TORCH_CHECK(length_ + n <= capacity_, "KVCache: ", length_, " + ", n, " tokens exceed the capacity ", capacity_);
  keys_[layer].narrow(2, length_, n).copy_(k);
  values_[layer].narrow(2, length_, n).copy_(v);
  return {keys_[layer].narrow(2, 0, length_ + n), values_[layer].narrow(2, 0, length_ + n)};
}

void KVCache::advance(int64_t n_tokens) {
  TORCH_CHECK(length_ + n_tokens <= capacity_, "KVCache: advance past capacity");
  length_ += n_tokens;
}

}  // namespace mole
