#include "moe/routing_context.h"

#include <torch/torch.h>

#include "moe/routing.h"

namespace mole {

namespace {
thread_local RoutingContext* g_context = nullptr;
thread_local const RoutingSinks* g_sinks = nullptr;
}

RoutingScope::RoutingScope(RoutingContext* context) : previous_(g_context) { g_context = context; }
RoutingScope::~RoutingScope() { g_context = previous_; }
RoutingContext* RoutingScope::current() { return g_context; }

RoutingSinkScope::RoutingSinkScope(const RoutingSinks& sinks) : sinks_(sinks), previous_(g_sinks) { g_sinks = &sinks_; }
RoutingSinkScope::~RoutingSinkScope() { g_sinks = previous_; }
const RoutingSinks* RoutingSinkScope::current() { return g_sinks; }

RoutePhase current_phase() { return g_context ? g_context->phase : RoutePhase::kPrefill; }

std::pair<torch::Tensor, torch::Tensor> current_modality(int64_t n_tokens, const torch::Device& device) {
  auto* ctx = g_context;
  if (!ctx || !ctx->modality.defined()) {
    auto opts = torch::TensorOptions().device(device);
    return {torch::full({n_tokens}, kModalityText, opts.dtype(torch::kInt64)),
            torch::ones({n_tokens}, opts.dtype(torch::kBool))};
  }
  TORCH_CHECK(ctx->modality.numel() == n_tokens, "routing context holds ", ctx->modality.numel(),
              " tokens but a MoLE layer sees ", n_tokens);
  auto valid = ctx->valid.defined() ? ctx->valid : torch::ones_like(ctx->modality, torch::kBool);
  return {ctx->modality.reshape({-1}).to(device), valid.reshape({-1}).to(device)};
}

}  // namespace mole
