// How every token's modality reaches the routers without the decoder knowing about adapters, and where routing
// decisions go.
//   - The model opens a RoutingScope around each forward (the language model, the vision tower) with the
//     modality and padding mask of the tokens it runs; each MoLE layer reads the current context.
//   - A caller that wants the decisions (the trainer: statistics and balance losses; `mole routes`: statistics
//     and each patch's top expert; eval: statistics) owns the sinks and opens a RoutingSinkScope around the
//     forwards it wants recorded. Outside one, nothing is recorded and nothing costs.
// Both scopes are per thread (a forward runs on one thread; torch's intra-op threads do not call modules) and
// restore what was there before when they end, on any exit.
//
// N=tokens (batch x sequence, flattened in x's order)
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "moe/balance.h"
#include "moe/family_routing.h"
#include "moe/routing_stats.h"

namespace mole {

// What the model says about the tokens a forward runs on.
struct RoutingContext {
  torch::Tensor modality;  // (N) int64, kModalityText / kModalityImage
  torch::Tensor valid;     // (N) bool, false on padding
  RoutePhase phase = RoutePhase::kPrefill;
  // The language model's tokens (what the family statistics count); false for the vision tower's.
  bool language = false;
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

// Balance losses of each MoLE layer of one forward, in the order the layers ran.
using LayerLosses = std::vector<std::pair<std::string, BalanceLosses>>;

// Where the routing decisions of the forwards inside a RoutingSinkScope go; a null sink is skipped.
struct RoutingSinks {
  RoutingStats* stats = nullptr;  // every decision, counted per layer, phase, modality and expert
  LayerLosses* losses = nullptr;  // (layer name, balance losses) of every MoLE layer; the trainer sums them
  // Each layer's top-1 expert per token (N) int64 on the CPU, from the latest decision: what the routing
  // pictures colour image patches by. Costs a copy to the host per layer, so only tools set it.
  std::map<std::string, torch::Tensor>* top1 = nullptr;
  // Top-1 experts by task family, language-model layers only (the trainer's; moe/family_routing.h).
  FamilyRouting* families = nullptr;
};

class RoutingSinkScope {
 public:
  explicit RoutingSinkScope(const RoutingSinks& sinks);
  ~RoutingSinkScope();
  RoutingSinkScope(const RoutingSinkScope&) = delete;
  RoutingSinkScope& operator=(const RoutingSinkScope&) = delete;
  static const RoutingSinks* current();  // nullptr outside any scope

 private:
  RoutingSinks sinks_;
  const RoutingSinks* previous_;
};

// The modality and valid mask for n_tokens tokens under the current scope; outside a scope every token is a
// valid text token. A scope whose token count differs from n_tokens is a bug in the caller (checked).
std::pair<torch::Tensor, torch::Tensor> current_modality(int64_t n_tokens, const torch::Device& device);
// The phase of the current scope (prefill outside any).
RoutePhase current_phase();

}  // namespace mole
