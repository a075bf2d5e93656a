// Options shared by both MoLE granularities (docs/MOE.md): experts, top-k, LoRA rank/alpha/dropout, the gating
// rule, the modality-aware routing mode, an optional always-on shared expert, the dispatch path and balance
// losses; how a layer hands its routing decisions to the caller's sinks; tokens grouped by expert.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/fields.h"
#include "core/limits.h"
#include "moe/balance.h"
#include "moe/lora.h"
#include "moe/router.h"

namespace mole {

// How a MoLE layer computes its experts; all give the same result (tested).
//   dense:  every expert on every token in batched GEMMs, gated by zeros outside the top-k. It materialises
//           E * C values per token (C = the expert's widest intermediate: the rank R for a Linear-level layer,
//           the FFN width F for an FFN-level one), so it pays only while E * C is small.
//   sparse: tokens sorted by expert, one small GEMM pair per expert over its tokens only.
//   fused:  FFN-level only: one autograd function with a hand-written backward over the sorted segments
//           (moe/fused_mole_ffn.h); what auto gives an FFN-level layer.
//   naive:  a plain per-expert loop over all tokens (the reference; slow).
enum class Dispatch { kAuto, kDense, kSparse, kFused, kNaive };
template <>
const EnumTable<Dispatch>& enum_table<Dispatch>();

// The auto rule of a linear-level layer: dense while n_experts * expert_width <= kDenseMaxColumns, sparse
// beyond. A request other than auto is returned as it is.
constexpr int64_t kDenseMaxColumns = 4096;
Dispatch resolve_dispatch(Dispatch requested, int64_t n_experts, int64_t expert_width);

struct MoleOptions {
  RouterOptions router(int64_t in_features) const { return RouterOptions(in_features, n_experts(), routing()); }

  TORCH_ARG(int64_t, n_experts) = 8;
  TORCH_ARG(int64_t, rank) = 16;
  TORCH_ARG(double, alpha) = 32.0;
  TORCH_ARG(double, dropout) = 0.0;
  TORCH_ARG(bool, rslora) = false;
  /// An always-on LoRA beside the routed experts (weight 1).
  TORCH_ARG(bool, shared_expert) = false;
  TORCH_ARG(RoutingOptions, routing) = {};
  TORCH_ARG(Dispatch, dispatch) = Dispatch::kAuto;
  TORCH_ARG(BalanceLossOptions, losses) = {};

 public:  // (TORCH_ARG leaves the access private)
  // The field list (core/fields.h): what adapter_config.json holds for these options, in one flat object.
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("rank", self.rank(), "LoRA rank of each expert (and of plain LoRA)", between(1, kMaxRank));
    v("alpha", self.alpha(), "LoRA alpha: deltas are scaled by alpha / rank (alpha / sqrt(rank) with rslora)", Bounds{0, 1e6, true});
    v("dropout", self.dropout(), "dropout on the adapter input while training", unit_open_above());
    v("rslora", self.rslora(), "rank-stabilised scaling alpha / sqrt(rank)");
    v("n_experts", self.n_experts(), "LoRA experts per MoLE layer", between(1, kMaxExperts));
    RoutingOptions::fields(self.routing(), v);  // top_k, gating, ... in the same object
    v("shared_expert", self.shared_expert(), "an always-on LoRA beside the routed experts");
    v("dispatch", self.dispatch(), "how the experts are computed (auto: dense or sparse by size; all equal)");
    v("losses", self.losses(), "balance and stability losses with their coefficients (docs/MOE.md)");
  }
  void validate(const FieldPath& at) const;  // counts >= 1, top_k <= n_experts, dropout and jitter in [0, 1)
};

// A plain LoRA (in -> out) with these options' rank, alpha, dropout and scaling: the shared expert, and plain
// LoRA beside MoLE layers.
LoraOptions lora_options(int64_t in_features, int64_t out_features, const MoleOptions& options);

class RouterImpl;

// Routes the flattened tokens x (N, D) of the layer `layer_name` with the modality of the current RoutingScope,
// and hands the decision to the sinks of the current RoutingSinkScope (statistics, balance losses, top-1).
// projections gives the layer's (N, E, P) expert projections A_i x for the contrastive loss; it is called only
// when that loss is on and a loss sink is open, so it costs nothing otherwise.
Routing route_and_record(RouterImpl& router, const torch::Tensor& x, const std::string& layer_name,
                         const BalanceLossOptions& losses,
                         const std::function<torch::Tensor()>& projections = {});

// Tokens of a routing grouped by expert: each (token, slot) assignment once, sorted by expert.
struct ExpertGroups {
  torch::Tensor token;             // (N*K) int64 token index of each assignment, grouped by expert
  torch::Tensor weight;            // (N*K) float32 gate weight of each assignment
  std::vector<int64_t> offsets;    // E+1 boundaries: assignments of expert e are [offsets[e], offsets[e+1])
};
ExpertGroups group_by_expert(const Routing& routing);

}  // namespace mole
