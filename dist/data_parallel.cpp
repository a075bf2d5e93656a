#include "dist/data_parallel.h"

#include <torch/torch.h>

namespace mole {

void broadcast_parameters(ProcessGroup& group, const std::vector<torch::Tensor>& params) {
  if (group.size() == 1 || params.empty()) return;
  torch::NoGradGuard no_grad;
  std::vector<bool> done(params.size(), false);
  for (size_t first = 0; first < params.size(); ++first) {
    if (done[first]) continue;
    std::vector<size_t> same;  // the parameters of first's dtype and device, in order
    for (size_t i = first; i < params.size(); ++i)
      if (!done[i] && params[i].dtype() == params[first].dtype() && params[i].device() == params[first].device())
        same.push_back(i), done[i] = true;
    std::vector<torch::Tensor> pieces;
    for (size_t i : same) pieces.push_back(params[i].detach().reshape({-1}));
    torch::Tensor flat = torch::cat(pieces);
    group.broadcast(flat, 0);
    int64_t offset = 0;
    for (size_t i : same) {
      const int64_t n = params[i].numel();
      params[i].detach().copy_(flat.narrow(0, offset, n).view(params[i].sizes()));
      offset += n;
    }
  }
}

void average_gradients(ProcessGroup& group, const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  if (group.size() == 1 || params.empty()) return;
  torch::NoGradGuard no_grad;
  // which parameters have a gradient on some rank
  torch::Tensor held = torch::empty({int64_t(params.size())}, torch::kFloat32);
  for (size_t i = 0; i < params.size(); ++i) held[int64_t(i)] = params[i].grad().defined() ? 1.0f : 0.0f;
  group.all_reduce_sum(held);
  const auto held_a = held.accessor<float, 1>();
  const double scale = 1.0 / double(group.size());

  auto flush = [&](const std::vector<size_t>& bucket) {
    if (bucket.empty()) return;
    std::vector<torch::Tensor> pieces;
    for (size_t i : bucket) {
      const torch::Tensor& g = params[i].grad();
      pieces.push_back(g.defined() ? g.reshape({-1}) : torch::zeros({params[i].numel()}, params[i].options()));
    }
    torch::Tensor flat = torch::cat(pieces);
    group.all_reduce_sum(flat);
    flat.mul_(scale);
    int64_t offset = 0;
    for (size_t i : bucket) {
      torch::Tensor p = params[i];
      const int64_t n = p.numel();
      torch::Tensor mean = flat.narrow(0, offset, n).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.clone();
      offset += n;
    }
  };
  // buckets in parameter order; a bucket holds one dtype and device
  std::vector<size_t> bucket;
  int64_t bytes = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    if (held_a[int64_t(i)] == 0.0f) continue;
    const bool fits = bucket.empty() || (params[i].dtype() == params[bucket[0]].dtype() &&
                                         params[i].device() == params[bucket[0]].device() &&
                                         bytes + int64_t(params[i].nbytes()) <= bucket_bytes);
    if (!fits) {
      flush(bucket);
      bucket.clear();
      bytes = 0;
    }
    bucket.push_back(i);
    bytes += int64_t(params[i].nbytes());
  }
  flush(bucket);
}

}  // namespace mole
