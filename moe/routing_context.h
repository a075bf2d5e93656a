// How the model hands every token's modality to the adapters without the decoder knowing about them: the
// model opens a RoutingScope around each forward (the language model, the vision tower), and each MoLE layer
// reads the current context for the tokens it sees. Routing statistics and balance losses are collected
// into the context's sinks when present. One scope per thread (a forward runs on one thread; torch's intra-op
// threads do not call modules).
//
// N=tokens (batch x sequence, flattened in x's order)
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "moe/balance.h"
#include "moe/routing_stats.h"

namespace mole {

struct RoutingContext {
  torch::Tensor modality;  // (N) int64, kModalityText / kModalityImage
  torch::Tensor valid;     // (N) bool, false on padding
  RoutePhase phase = RoutePhase::kPrefill;
  RoutingStats* stats = nullptr;  // record every routing decision here when set
  // Balance losses of every MoLE layer (layer name, losses) when set; the trainer sums them.
  std::vector<std::pair<std::string, BalanceLosses>>* losses = nullptr;
  // Each layer's top-1 expert per token (N) int64 on the CPU, from the latest decision, when set: what the
  // routing pictures colour image patches by. Costs a copy to the host per layer, so only tools set it.
  std::map<std::string, torch::Tensor>* top1 = nullptr;
};

class RoutingScope {
 public:
  explicit RoutingScope(RoutingContext* context);
  ~RoutingScope();
  RoutingScope(const RoutingScope&) = delete;
  RoutingScope& operator=(const RoutingScope&) = delete;
  static RoutingContext* current();  // nullptr outside any scope

 private:
  RoutingContext* previous_;
};

// The modality and valid mask for n_tokens tokens under the current scope; outside a scope every token is a
// valid text token. A scope whose token count differs from n_tokens is a bug in the caller (checked).
std::pair<torch::Tensor, torch::Tensor> current_modality(int64_t n_tokens, const torch::Device& device);

}  // namespace mole
