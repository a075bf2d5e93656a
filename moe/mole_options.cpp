#include "moe/mole_options.h"

#include <stdexcept>

#include <torch/torch.h>

#include "moe/routing_context.h"

namespace mole {

MOLE_ENUM_NAMES(Dispatch, "dispatch", {Dispatch::kAuto, "auto"}, {Dispatch::kDense, "dense"},
                {Dispatch::kSparse, "sparse"}, {Dispatch::kFused, "fused"}, {Dispatch::kNaive, "naive"})

Dispatch resolve_dispatch(Dispatch requested, int64_t n_experts, int64_t expert_width) {
  if (requested != Dispatch::kAuto) return requested;
  return n_experts * expert_width <= kDenseMaxColumns ? Dispatch::kDense : Dispatch::kSparse;
}

LoraOptions lora_options(int64_t in_features, int64_t out_features, const MoleOptions& options) {
  return LoraOptions(in_features, out_features)
      .rank(options.rank())
      .alpha(options.alpha())
      .dropout(options.dropout())
      .rslora(options.rslora());
}

void MoleOptions::validate(const FieldPath& at) const {
  if (n_experts() < 1) at.fail("n_experts", "must be >= 1, got " + std::to_string(n_experts()));
  if (rank() < 1) at.fail("rank", "must be >= 1, got " + std::to_string(rank()));
  if (n_experts() > kMaxExpertRank / rank())  // each layer's A and B are experts x rank wide
    at.fail("n_experts", "x rank is " + std::to_string(n_experts()) + " x " + std::to_string(rank()) +
                             ", more than " + std::to_string(kMaxExpertRank) + " per layer");
  if (routing().top_k() < 1 || routing().top_k() > n_experts())
    at.fail("top_k", "must be in 1..n_experts (" + std::to_string(n_experts()) + "), got " +
                         std::to_string(routing().top_k()));
  if (!(dropout() >= 0.0 && dropout() < 1.0)) at.fail("dropout", "must be in [0, 1), got " + std::to_string(dropout()));
  if (!(routing().jitter() >= 0.0 && routing().jitter() < 1.0))
    at.fail("jitter", "must be in [0, 1), got " + std::to_string(routing().jitter()));
}

Routing route_and_record(RouterImpl& router, const torch::Tensor& x, const std::string& layer_name,
                         const BalanceLossOptions& losses,
                         const std::function<torch::Tensor()>& projections) {
  auto [modality, valid] = current_modality(x.size(0), x.device());
  Routing routing = router.forward(x, modality);
  if (const RoutingSinks* sinks = RoutingSinkScope::current()) {
    if (sinks->stats) sinks->stats->record(layer_name, routing, modality, valid, current_phase());
    if (sinks->losses && losses.any()) {
      torch::Tensor expert_projections;  // (N, E, P), only for the contrastive loss
      if (losses.contrastive != 0.0) {
        TORCH_CHECK(projections, "MoLE ", layer_name, ": the contrastive loss is on but this layer gives no expert "
                    "projections");
        expert_projections = projections();
      }
      sinks->losses->emplace_back(layer_name, balance_losses(routing, modality, valid, losses, expert_projections));
    }
    if (sinks->top1) (*sinks->top1)[layer_name] = routing.topk_index.select(1, 0).detach().cpu();
    if (sinks->families) {
      const RoutingContext* context = RoutingScope::current();
      if (context && context->language) sinks->families->record(layer_name, routing);
    }
  }
  return routing;
}

ExpertGroups group_by_expert(const Routing& routing) {
  int64_t n = routing.n_tokens(), k = routing.top_k(), e = routing.n_experts();
  auto flat_expert = routing.topk_index.reshape({-1});  // (N*K), token-major
  auto flat_token = torch::arange(n, routing.topk_index.options()).repeat_interleave(k);
  auto order = std::get<1>(torch::sort(flat_expert, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  ExpertGroups groups;
  groups.token = flat_token.index_select(0, order);
  groups.weight = routing.topk_weight.reshape({-1}).index_select(0, order);
  auto counts = torch::bincount(flat_expert, {}, e).cpu();  // one host sync per layer
  groups.offsets.assign(1, 0);
  auto c = counts.accessor<int64_t, 1>();
  for (int64_t i = 0; i < e; ++i) groups.offsets.push_back(groups.offsets.back() + c[i]);
  return groups;
}

}  // namespace mole
