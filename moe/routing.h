// What a router decides for a batch of tokens: the data that MoLE layers, balance losses and routing
// statistics share. Everything here is float32 (routers always run in float32, docs/MOE.md), whatever the model dtype.
//
// N=tokens E=experts K=top-k
#pragma once

#include <cstdint>

#include <torch/types.h>

namespace mole {

// Token modality ids, carried by every token (docs/MOE.md "Modality-aware routing"); room for more.
constexpr int64_t kModalityText = 0;
constexpr int64_t kModalityImage = 1;
constexpr int64_t kMaxModalities = 4;

struct Routing {
  torch::Tensor logits;       // (N, E) router logits z = W_g x (+ noise); experts a token may not use are -inf
  torch::Tensor probs;        // (N, E) softmax(logits) over the experts the token may use (0 elsewhere)
  torch::Tensor topk_index;   // (N, K) int64, chosen experts, best first; ties broken by the lower index
  torch::Tensor topk_weight;  // (N, K) gate weights G of the chosen experts
  torch::Tensor gates;        // (N, E) G scattered to a dense matrix, 0 outside the top-k
  torch::Tensor allowed;      // (N, E) bool: experts the token may use (all true unless modality_grouped)

  int64_t n_tokens() const { return logits.size(0); }
  int64_t n_experts() const { return logits.size(1); }
  int64_t top_k() const { return topk_index.size(1); }
};

}  // namespace mole
