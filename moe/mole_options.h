// Options shared by both MoLE granularities (MOE.md): experts, top-k, LoRA rank/alpha/dropout, the gating rule,
// the modality-aware routing mode, an optional always-on shared expert, the dispatch path and balance losses.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moe/balance.h"
#include "moe/router.h"

namespace mole {

// How a MoLE layer computes its experts; all give the same result (tested).
//   dense:  every expert's A in one GEMM, gate (zeros outside the top-k), stacked B in one GEMM. Cheapest when
//           n_experts * rank is small.
//   sparse: tokens sorted by expert, one small GEMM pair per expert over its tokens only.
//   naive:  a plain per-expert loop over all tokens (the reference; slow).
enum class Dispatch { kAuto, kDense, kSparse, kNaive };
Dispatch parse_dispatch(const std::string& name);  // auto | dense | sparse | naive
std::string dispatch_name(Dispatch dispatch);

struct MoleOptions {
  RouterOptions router(int64_t in_features) const;
  Dispatch resolved_dispatch() const;  // auto -> dense or sparse (linear level)

  TORCH_ARG(int64_t, n_experts) = 8;
  TORCH_ARG(int64_t, top_k) = 2;
  TORCH_ARG(int64_t, rank) = 16;
  TORCH_ARG(double, alpha) = 32.0;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, rslora) = false;
  /// An always-on LoRA beside the routed experts (weight 1).
  TORCH_ARG(bool, shared_expert) = false;
  TORCH_ARG(Gating, gating) = Gating::kTopkSoftmax;
  TORCH_ARG(bool, renormalize) = false;
  TORCH_ARG(double, jitter) = 0.0;
  TORCH_ARG(RoutingMode, mode) = RoutingMode::kLearned;
  TORCH_ARG(std::vector<int64_t>, expert_modality) = {};
  TORCH_ARG(int64_t, n_modalities) = 2;
  TORCH_ARG(Dispatch, dispatch) = Dispatch::kAuto;
  /// auto picks dense when n_experts * rank <= this.
  TORCH_ARG(int64_t, dense_max_columns) = 512;
  TORCH_ARG(BalanceLossOptions, losses) = {};
};

class RouterImpl;

// Routes the flattened tokens x (N, D) of the layer `layer_name` with the modality of the current RoutingScope,
// and records statistics and balance losses into the scope's sinks.
Routing route_and_record(RouterImpl& router, const torch::Tensor& x, const std::string& layer_name,
                         const BalanceLossOptions& losses);

// Tokens of a routing grouped by expert: each (token, slot) assignment once, sorted by expert.
struct ExpertGroups {
  torch::Tensor token;             // (N*K) int64 token index of each assignment, grouped by expert
  torch::Tensor weight;            // (N*K) float32 gate weight of each assignment
  std::vector<int64_t> offsets;    // E+1 boundaries: assignments of expert e are [offsets[e], offsets[e+1])
};
ExpertGroups group_by_expert(const Routing& routing);

}  // namespace mole
