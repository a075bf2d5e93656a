// Balance and stability losses of a router (docs/MOE.md "Balance and stability losses"), each with its own
// coefficient, summed over layers by the trainer and logged apart.
// Sources: Switch Transformers (switch_aux, eq. 4), Shazeer et al. 2017 (importance and load as CV^2, written
// as the cv_squared of the PyTorch ports of the sparsely-gated MoE), ST-MoE (z_loss), and the plain
// squared-deviation form (sq_dev), and the contrastive expert loss (contrastive: the MoE fine-tuning survey's
// InfoNCE over a token's selected experts for top-k >= 2; MoELoRA, arXiv 2402.12851, for top-1).
//
// Every loss works on the tokens of `mask` and the experts of `experts`. Neither needs a host sync: the token
// and expert selections are 0/1 weights, counts stay on the device, and no valid tokens gives exactly 0.
// Computed in float32 (float64 when the routing is float64, which the tests use for gradient checks).
//
// N=tokens E=experts K=top-k P=width of an expert's projection G=groups of tokens (modalities with per_modality,
// else 1)
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "core/fields.h"
#include "core/limits.h"
#include "moe/routing.h"

namespace mole {

struct BalanceLossOptions {  // coefficients; 0 = off
  double switch_aux = 0.0, importance = 0.0, load = 0.0, z_loss = 0.0, sq_dev = 0.0, contrastive = 0.0;
  // Temperature of the contrastive loss's cosines. 0.1, inside the range contrastive learning settled on (SimCLR
  // 0.1-0.5, MoCo 0.07-0.2): experts initialised independently give cosines of spread ~1/sqrt(P) (0.18 at P = 32),
  // which 0.1 turns into logits ~2 apart, so the softmax over experts is neither flat (no signal, large tau) nor
  // one-hot on the hardest negative (saturated, small tau); and |sim| <= 1/tau = 10 stays far from float32's exp
  // range.
  double contrastive_tau = 0.1;
  bool switch_use_topk = false;  // f_i from all top-k slots (count / (T*K)) instead of top-1 only
  bool per_modality = false;     // each loss over each modality's tokens and that modality's allowed experts,
                                 // averaged over the modalities present

  // The one field list (core/fields.h): JSON keys are the field names; a misspelt coefficient is an error.
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("switch_aux", self.switch_aux, "Switch Transformers load-balancing loss: n * sum_i f_i P_i", at_least(0));
    v("importance", self.importance, "CV^2 of the summed gate weights per expert (Shazeer et al. 2017)", at_least(0));
    v("load", self.load, "CV^2 of the tokens per expert (a count: no gradient)", at_least(0));
    v("z_loss", self.z_loss, "ST-MoE router z-loss: mean (logsumexp z)^2", at_least(0));
    v("sq_dev", self.sq_dev, "sum_i (1/n - mean gate_i)^2", at_least(0));
    v("contrastive", self.contrastive, "InfoNCE over experts on their normalised A x (docs/MOE.md)", at_least(0));
    v("contrastive_tau", self.contrastive_tau, "temperature of the contrastive loss's cosines (> 0)", Bounds{0, 1e6, true});
    v("switch_use_topk", self.switch_use_topk, "switch_aux counts every top-k slot, not only the top-1");
    v("per_modality", self.per_modality, "each loss per modality over its allowed experts, then averaged");
  }
  void validate(const FieldPath& at) const;  // coefficients >= 0, contrastive_tau > 0
  bool any() const;  // some coefficient is nonzero
};

// Each loss is over the tokens where `mask` (N, bool) is true and the experts where `experts` (E, bool) is true;
// an undefined tensor means all. T = tokens considered, n = experts considered. Returns a scalar.
// No token considered gives 0 (never NaN); so does a single expert for the CV^2 losses (as cv_squared does).
//
// switch_aux: n * sum_i f_i * P_i, P_i = mean_t probs_ti, f_i = fraction of tokens whose top-1 is i, or with
//             use_topk the fraction of the T*K top-k slots that hold i. f is a count: no gradient flows through it.
torch::Tensor switch_aux_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts = {},
                              bool use_topk = false);
// importance: CV(Importance)^2, Importance_i = sum_t gates_ti; CV^2 = var / (mean^2 + 1e-10) with the unbiased
//             variance over the n experts (torch's default var, as Shazeer's cv_squared).
torch::Tensor importance_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts = {});
// load:       CV(counts)^2, counts_i = tokens with i among their top-k. A count: the result has no gradient.
torch::Tensor load_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts = {});
// z_loss:     mean_t (logsumexp_i z_ti)^2, the logsumexp over the experts considered (disallowed ones are -inf).
torch::Tensor z_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts = {});
// sq_dev:     sum_i (1/n - mean_t gates_ti)^2.
torch::Tensor sq_dev_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts = {});
// contrastive: an InfoNCE over experts on o_ti = normalise(projections_ti), projections (N, E, P) the rank-space
//             projection A_i x_t of every expert for every token, sim(a, b) = cos(a, b) / tau. The negatives of
//             token t are the experts m it may use (routing.allowed, and among `experts`), except the anchor;
//             the experts it selected are always in the denominator.
//   top_k >= 2: mean over tokens of the mean over the ordered pairs i != j of its selected experts of
//             -log( exp(sim(o_ti, o_tj)) / sum_{m != i} exp(sim(o_ti, o_tm)) )   (the MoE fine-tuning survey).
//   top_k == 1: with i the top-1 of t and p = normalise(sum of o_si over the other tokens s considered whose
//             top-1 is i), -log( exp(sim(o_ti, p)) / (exp(sim(o_ti, p)) + sum_{m != i} exp(sim(o_ti, o_tm))) ),
//             the mean over the tokens that have such a p (MoELoRA: the same expert on other tokens is the
//             positive, other experts on the same token the negatives; one centroid keeps it linear in N).
// The gradient reaches the projections (so A and x), never the routing's choices, which are indices.
torch::Tensor contrastive_loss(const Routing& r, const torch::Tensor& projections, const torch::Tensor& mask,
                               double tau, const torch::Tensor& experts = {});

struct BalanceLosses {
  // Unweighted scalar (float32) of every loss whose coefficient is nonzero:
  // "switch_aux", "importance", "load", "z_loss", "sq_dev", "contrastive".
  std::map<std::string, torch::Tensor> terms;
  torch::Tensor total;  // sum of coefficient * term; a 0 scalar when none is on
};

// The losses that `options` turns on for one routing decision. valid (N, bool): false on padding, which no loss
// sees. modality (N, int64).
// per_modality: for each modality m in [0, kMaxModalities) present among the valid tokens, each loss over the
// tokens valid & modality == m and the experts in the `allowed` row of the first such token (tokens of one
// modality share their allowed row under every routing mode); each term is the mean over the modalities
// present. Tokens whose modality is outside [0, kMaxModalities) belong to no modality and count in no term.
// projections (N, E, P): what contrastive_loss reads; needed only when options.contrastive is nonzero. Its
// per-modality form takes the centroids (top-1) within each modality, and its mean is over the modalities with a
// token that has a positive.
BalanceLosses balance_losses(const Routing& r, const torch::Tensor& modality, const torch::Tensor& valid,
                             const BalanceLossOptions& options, const torch::Tensor& projections = {});

// The losses of every MoLE layer of one forward (as a RoutingContext collects them), summed over layers: each
// term apart (for the log) and the weighted total (for the loss). Empty input gives an empty sum.
BalanceLosses sum_over_layers(const std::vector<std::pair<std::string, BalanceLosses>>& per_layer);

}  // namespace mole
