// Test helper: a Routing made by hand with explicit loops (plain top-k softmax, Mixtral's topk_softmax), so that
// the balance-loss and routing-statistics tests do not depend on the router they are meant to check beside.
// A HandRouting is the same routing as plain double vectors, for reference computations written as loops.
//
// N=tokens E=experts K=top-k
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include <torch/torch.h>

#include "moe/routing.h"

namespace mole::test {

struct HandRouting {
  int64_t n = 0, e = 0, k = 0;
  std::vector<double> logits, probs, gates;  // (N, E) row-major; disallowed logits are -inf
  std::vector<double> topk_weight;           // (N, K)
  std::vector<int64_t> topk_index;           // (N, K)
  std::vector<char> allowed;                 // (N, E)

  double logit(int64_t t, int64_t i) const { return logits[t * e + i]; }
  double prob(int64_t t, int64_t i) const { return probs[t * e + i]; }
  double gate(int64_t t, int64_t i) const { return gates[t * e + i]; }
  int64_t index(int64_t t, int64_t s) const { return topk_index[t * k + s]; }
  double weight(int64_t t, int64_t s) const { return topk_weight[t * k + s]; }
  bool is_allowed(int64_t t, int64_t i) const { return allowed[t * e + i] != 0; }

  // The same routing as tensors (float32 unless asked otherwise).
  Routing to_routing(torch::ScalarType dtype = torch::kFloat32) const {
    auto f = torch::dtype(torch::kFloat64);
    Routing r;
    r.logits = torch::tensor(logits, f).view({n, e}).to(dtype);
    r.probs = torch::tensor(probs, f).view({n, e}).to(dtype);
    r.gates = torch::tensor(gates, f).view({n, e}).to(dtype);
    r.topk_weight = torch::tensor(topk_weight, f).view({n, k}).to(dtype);
    r.topk_index = torch::tensor(topk_index, torch::kInt64).view({n, k});
    std::vector<int64_t> a(allowed.begin(), allowed.end());
    r.allowed = torch::tensor(a, torch::kInt64).view({n, e}).to(torch::kBool);
    if (n == 0) {  // torch::tensor of an empty vector has no shape to view
      for (auto* t : {&r.logits, &r.probs, &r.gates}) *t = torch::zeros({0, e}, torch::dtype(dtype));
      r.topk_weight = torch::zeros({0, k}, torch::dtype(dtype));
      r.topk_index = torch::zeros({0, k}, torch::kInt64);
      r.allowed = torch::zeros({0, e}, torch::kBool);
    }
    return r;
  }
};

// Reads a Routing back into double vectors (so references see exactly the float32-rounded values).
inline HandRouting hand_from(const Routing& r) {
  HandRouting h;
  h.n = r.logits.size(0);
  h.e = r.logits.size(1);
  h.k = r.topk_index.size(1);
  auto vec = [](const torch::Tensor& t) {
    auto c = t.detach().to(torch::kFloat64).contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  h.logits = vec(r.logits);
  h.probs = vec(r.probs);
  h.gates = vec(r.gates);
  h.topk_weight = vec(r.topk_weight);
  auto idx = r.topk_index.contiguous();
  h.topk_index.assign(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
  auto al = r.allowed.to(torch::kInt8).contiguous();
  h.allowed.assign(al.data_ptr<int8_t>(), al.data_ptr<int8_t>() + al.numel());
  return h;
}

// Plain top-k softmax over the allowed experts, with loops: probs = softmax(z) over the allowed experts;
// the top-k by logit (ties to the lower index); gates = softmax over the k chosen logits (Mixtral).
// logits (N*E row-major); allowed empty = all allowed.
inline HandRouting hand_routing(const std::vector<double>& logits, int64_t n, int64_t e, int64_t k,
                                const std::vector<char>& allowed = {}) {
  const double inf = std::numeric_limits<double>::infinity();
  HandRouting h;
  h.n = n;
  h.e = e;
  h.k = k;
  h.allowed = allowed.empty() ? std::vector<char>(size_t(n * e), 1) : allowed;
  h.logits.assign(size_t(n * e), -inf);
  h.probs.assign(size_t(n * e), 0.0);
  h.gates.assign(size_t(n * e), 0.0);
  for (int64_t t = 0; t < n; ++t) {
    double top = -inf;
    for (int64_t i = 0; i < e; ++i)
      if (h.is_allowed(t, i)) {
        h.logits[t * e + i] = logits[t * e + i];
        top = std::max(top, logits[t * e + i]);
      }
    double sum = 0.0;
    for (int64_t i = 0; i < e; ++i)
      if (h.is_allowed(t, i)) sum += std::exp(h.logit(t, i) - top);
    for (int64_t i = 0; i < e; ++i)
      if (h.is_allowed(t, i)) h.probs[t * e + i] = std::exp(h.logit(t, i) - top) / sum;
    std::vector<int64_t> order;
    for (int64_t i = 0; i < e; ++i)
      if (h.is_allowed(t, i)) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return h.logit(t, a) > h.logit(t, b); });
    double chosen_sum = 0.0;
    for (int64_t s = 0; s < k; ++s) chosen_sum += std::exp(h.logit(t, order[s]) - top);
    for (int64_t s = 0; s < k; ++s) {
      int64_t i = order[s];
      double w = std::exp(h.logit(t, i) - top) / chosen_sum;
      h.topk_index.push_back(i);
      h.topk_weight.push_back(w);
      h.gates[t * e + i] = w;
    }
  }
  return h;
}

// n standard-normal values from a fixed seed, as doubles.
inline std::vector<double> random_normal(int64_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> out(static_cast<size_t>(n));
  for (auto& v : out) v = normal(gen);
  return out;
}

// Bools from a list of 0/1 ints, as a (N) bool tensor.
inline torch::Tensor bools(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64).to(torch::kBool); }

}  // namespace mole::test
