#include "moe/mole_options.h"

#include <stdexcept>

#include <torch/torch.h>

#include "moe/routing_context.h"

namespace mole {

Dispatch parse_dispatch(const std::string& name) {
  if (name == "auto") return Dispatch::kAuto;
  if (name == "dense") return Dispatch::kDense;
  if (name == "sparse") return Dispatch::kSparse;
  if (name == "naive") return Dispatch::kNaive;
  throw std::invalid_argument("unknown dispatch '" + name + "' (auto, dense, sparse, naive)");
}

std::string dispatch_name(Dispatch dispatch) {
  switch (dispatch) {
    case Dispatch::kAuto: return "auto";
    case Dispatch::kDense: return "dense";
    case Dispatch::kSparse: return "sparse";
    case Dispatch::kNaive: return "naive";
  }
  return "?";
}

RouterOptions MoleOptions::router(int64_t in_features) const {
  return RouterOptions(in_features, n_experts())
      .top_k(top_k())
      .gating(gating())
      .renormalize(renormalize())
      .jitter(jitter())
      .mode(mode())
      .expert_modality(expert_modality())
      .n_modalities(n_modalities());
}

Dispatch MoleOptions::resolved_dispatch() const {
  if (dispatch() != Dispatch::kAuto) return dispatch();
  return n_experts() * rank() <= dense_max_columns() ? Dispatch::kDense : Dispatch::kSparse;
}

Routing route_and_record(RouterImpl& router, const torch::Tensor& x, const std::string& layer_name,
                         const BalanceLossOptions& losses) {
  auto [modality, valid] = current_modality(x.size(0), x.device());
  Routing routing = router.forward(x, modality);
  if (auto* ctx = RoutingScope::current()) {
    if (ctx->stats) ctx->stats->record(layer_name, routing, modality, valid, ctx->phase);
    if (ctx->losses && losses.any()) ctx->losses->emplace_back(layer_name, balance_losses(routing, modality, valid, losses));
    if (ctx->top1) (*ctx->top1)[layer_name] = routing.topk_index.select(1, 0).detach().cpu();
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
