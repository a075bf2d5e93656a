#include "moe/router.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "core/linear.h"

namespace mole {

MOLE_ENUM_NAMES(Gating, "gating", {Gating::kTopkSoftmax, "topk_softmax"}, {Gating::kSoftmaxTopk, "softmax_topk"},
                {Gating::kNoisyTopk, "noisy_topk"})

MOLE_ENUM_NAMES(RoutingMode, "routing mode", {RoutingMode::kLearned, "learned"},
                {RoutingMode::kModalityGrouped, "modality_grouped"}, {RoutingMode::kModalityEmbed, "modality_embed"})

RouterImpl::RouterImpl(const RouterOptions& options_) : options(options_) { reset(); }

void RouterImpl::reset() {
  int64_t e = options.n_experts(), d = options.in_features(), m = options.n_modalities();
  const RoutingOptions& routing = options.routing();
  TORCH_CHECK(e >= 1 && d >= 1 && m >= 1, "router: n_experts, in_features and n_modalities must be >= 1");
  TORCH_CHECK(routing.top_k() >= 1 && routing.top_k() <= e, "router: top_k must be in 1..", e, ", got ",
              routing.top_k());
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  weight = register_parameter("weight", torch::empty({e, d}, f32));
  if (routing.gating() == Gating::kNoisyTopk)
    noise_weight = register_parameter("noise_weight", torch::empty({e, d}, f32));
  if (routing.mode() == RoutingMode::kModalityEmbed)
    modality_embedding = register_parameter("modality_embedding", torch::empty({m, d}, f32));

  auto allowed = torch::ones({m, e}, torch::kBool);
  if (routing.mode() == RoutingMode::kModalityGrouped) {
    const auto& groups = routing.expert_modality();
    TORCH_CHECK(static_cast<int64_t>(groups.size()) == e, "router: modality_grouped needs expert_modality with one "
                "entry per expert (", e, "), got ", groups.size());
    allowed.zero_();
    for (int64_t i = 0; i < e; ++i) {
      TORCH_CHECK(groups[i] >= -1 && groups[i] < m, "router: expert_modality[", i, "] = ", groups[i],
                  " is not a modality (0..", m - 1, ") or -1 (shared)");
      if (groups[i] == -1) allowed.select(1, i).fill_(true);
      else allowed[groups[i]][i] = true;
    }
    for (int64_t mod = 0; mod < m; ++mod) {
      int64_t n_allowed = allowed[mod].sum().item<int64_t>();
      TORCH_CHECK(n_allowed >= routing.top_k(), "router: modality ", mod, " may use ", n_allowed,
                  " experts, fewer than top_k = ", routing.top_k());
    }
  }
  allowed_by_modality_ = register_buffer("allowed_by_modality", allowed);
  if (!NoInitGuard::active()) reset_parameters();
}

void RouterImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  // Small logits at the start: every expert about equally likely, as a fresh nn.Linear gate would give.
  double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
  weight.uniform_(-bound, bound);
  if (noise_weight.defined()) noise_weight.zero_();  // softplus(0) = 0.69: moderate noise to start
  if (modality_embedding.defined()) modality_embedding.zero_();
}

Routing route_from_logits(const torch::Tensor& logits, const torch::Tensor& allowed, int64_t top_k, Gating gating,
                          bool renormalize) {
  Routing r;
  r.allowed = allowed;
  r.logits = logits.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());  // (N, E)
  r.probs = torch::softmax(r.logits, -1);                                                        // (N, E)
  // A stable descending sort keeps equal logits in index order: ties go to the lower expert index.
  auto order = std::get<1>(torch::sort(r.logits.detach(), /*stable=*/true, /*dim=*/-1, /*descending=*/true));
  r.topk_index = order.narrow(1, 0, top_k).contiguous();  // (N, K)
  if (gating == Gating::kSoftmaxTopk) {
    r.topk_weight = r.probs.gather(1, r.topk_index);  // G_i = p_i
    if (renormalize) r.topk_weight = r.topk_weight / r.topk_weight.sum(-1, /*keepdim=*/true);
  } else {
    r.topk_weight = torch::softmax(r.logits.gather(1, r.topk_index), -1);  // softmax over the k largest
  }
  r.gates = torch::zeros_like(r.probs).scatter(1, r.topk_index, r.topk_weight);  // (N, E)
  return r;
}

Routing RouterImpl::forward(const torch::Tensor& x, const torch::Tensor& modality) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.in_features(), "router: x must be (tokens, ",
              options.in_features(), "), got ", x.sizes());
  TORCH_CHECK(modality.dim() == 1 && modality.size(0) == x.size(0), "router: modality must be (", x.size(0),
              "), got ", modality.sizes());
  const RoutingOptions& routing = options.routing();
  // The router runs in float32 whatever the model dtype, autocast included (a bf16 linear would round the
  // logits that decide the routing): autocast is off inside, the input cast by autograd.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  auto h = x.to(torch::kFloat32);
  if (is_training() && routing.jitter() > 0)
    h = h * torch::empty_like(h).uniform_(1.0 - routing.jitter(), 1.0 + routing.jitter());
  if (modality_embedding.defined()) h = h + modality_embedding.index_select(0, modality);  // x + m_modality
  auto logits = torch::linear(h, weight);                                                 // (N, E)
  if (noise_weight.defined() && is_training())
    logits = logits + torch::randn_like(logits) * torch::softplus(torch::linear(h, noise_weight));
  auto allowed = allowed_by_modality_.index_select(0, modality);  // (N, E)
  return route_from_logits(logits, allowed, routing.top_k(), routing.gating(), routing.renormalize());
}

}  // namespace mole
