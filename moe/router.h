// Token router of a MoLE layer: logits z = W_g x in float32, a gating rule that turns them into top-k gate
// weights, and modality-aware variants (docs/MOE.md "Gating", "Modality-aware routing").
// Sources: Mixtral (topk_softmax), Switch Transformers / GShard (softmax_topk, jitter), Shazeer et al. 2017
// (noisy_topk), LLaVA-MoLE (modality-blind learned router), MoMa (modality-grouped experts).
//
// N=tokens D=router input E=experts K=top-k M=modalities
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "core/fields.h"
#include "core/limits.h"

#include "moe/routing.h"

namespace mole {

enum class Gating { kTopkSoftmax, kSoftmaxTopk, kNoisyTopk };
enum class RoutingMode { kLearned, kModalityGrouped, kModalityEmbed };
template <>
const EnumTable<Gating>& enum_table<Gating>();  // topk_softmax | softmax_topk | noisy_topk
template <>
const EnumTable<RoutingMode>& enum_table<RoutingMode>();  // learned | modality_grouped | modality_embed

// How a router turns its logits into each token's experts: what a MoLE layer's config says about routing, shared
// by RouterOptions and MoleOptions (one field list).
struct RoutingOptions {
  /// Experts each token uses (1..n_experts, or 1..group size with modality_grouped).
  TORCH_ARG(int64_t, top_k) = 2;
  TORCH_ARG(Gating, gating) = Gating::kTopkSoftmax;
  /// softmax_topk: divide the k chosen probabilities by their sum.
  TORCH_ARG(bool, renormalize) = false;
  /// Switch jitter: multiply the router input by U(1-e, 1+e) while training; 0 = off.
  TORCH_ARG(double, jitter) = 0.0;
  TORCH_ARG(RoutingMode, mode) = RoutingMode::kLearned;
  /// modality_grouped: the modality each expert serves, or -1 for a shared expert any modality may use.
  TORCH_ARG(std::vector<int64_t>, expert_modality) = {};

 public:  // (TORCH_ARG leaves the access private)
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("top_k", self.top_k(), "experts per token", between(1, kMaxExperts));
    v("gating", self.gating(), "how logits become gate weights (docs/MOE.md \"Gating\")");
    v("renormalize", self.renormalize(), "softmax_topk: the k chosen probabilities divided by their sum");
    v("jitter", self.jitter(), "Switch jitter on the router input while training (0: off)", unit_open_above());
    v("routing_mode", self.mode(), "learned, or modality-aware (docs/MOE.md \"Modality-aware routing\")");
    v("expert_modality", self.expert_modality(),
      "modality_grouped: each expert's modality (0 text, 1 image, -1 shared by all)", between(-1, kMaxModalities - 1));
  }
};

struct RouterOptions {
  RouterOptions(int64_t in_features, int64_t n_experts, RoutingOptions routing = {})
      : in_features_(in_features), n_experts_(n_experts), routing_(std::move(routing)) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, n_experts);
  TORCH_ARG(RoutingOptions, routing);
  /// Modalities known to modality_embed and modality_grouped.
  TORCH_ARG(int64_t, n_modalities) = 2;
};

class RouterImpl : public torch::nn::Module {
 public:
  explicit RouterImpl(const RouterOptions& options);
  void reset();
  void reset_parameters();
  // x (N, D) in any dtype, modality (N) int64 -> the routing of every token, float32.
  Routing forward(const torch::Tensor& x, const torch::Tensor& modality);
  // (M, E) bool: which experts each modality may use.
  torch::Tensor allowed_by_modality() const { return allowed_by_modality_; }

  RouterOptions options;
  torch::Tensor weight;              // (E, D) float32, W_g
  torch::Tensor noise_weight;        // (E, D) float32, W_noise (noisy_topk only)
  torch::Tensor modality_embedding;  // (M, D) float32, m_modality (modality_embed only)

 private:
  torch::Tensor allowed_by_modality_;  // (M, E) bool, a buffer
};
TORCH_MODULE(Router);

// The routing for given logits (N, E) and allowed experts (N, E): the gating rule alone, shared by the router
// and by tests. Ties in the top-k go to the lower expert index.
Routing route_from_logits(const torch::Tensor& logits, const torch::Tensor& allowed, int64_t top_k, Gating gating,
                          bool renormalize);

}  // namespace mole
