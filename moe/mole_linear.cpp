#include "moe/mole_linear.h"

#include <cmath>

#include <torch/torch.h>

namespace mole {

MoleLinearImpl::MoleLinearImpl(const MoleLinearOptions& options_) : options(options_) { reset(); }

void MoleLinearImpl::reset() {
  const MoleOptions& mole = options.mole();
  int64_t e = mole.n_experts(), r = mole.rank(), in = options.in_features(), out = options.out_features();
  TORCH_CHECK(e >= 1 && r >= 1, "MoLE: n_experts and rank must be >= 1");
  TORCH_CHECK(mole.dispatch() != Dispatch::kFused, "MoLE ", options.layer_name(),
              ": dispatch 'fused' is for FFN-level MoLE; a linear-level layer takes auto, dense, sparse or naive");
  router = register_module("router", Router(mole.router(in)));
  lora_A = register_parameter("lora_A", torch::empty({e, r, in}));
  lora_B = register_parameter("lora_B", torch::empty({e, out, r}));
  dropout = register_module("dropout", Dropout(mole.dropout()));
  if (mole.shared_expert()) shared = register_module("shared", Lora(lora_options(in, out, mole)));
  if (!NoInitGuard::active()) reset_parameters();
}

void MoleLinearImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < options.mole().n_experts(); ++i)
    torch::nn::init::kaiming_uniform_(lora_A[i], std::sqrt(5.0));
  lora_B.zero_();  // every expert starts as the identity change, as LoRA's B
}

torch::Tensor MoleLinearImpl::routed_delta(const torch::Tensor& x, const Routing& routing, Dispatch dispatch) {
  const int64_t n = x.size(0), e = options.mole().n_experts(), r = options.mole().rank();
  const int64_t in_features = options.in_features(), out_features = options.out_features();
  auto dtype = lora_A.scalar_type();
  auto x_adapter = x.to(dtype);  // (N, I), dropout already applied
  double s = scale();
  switch (dispatch) {
    case Dispatch::kAuto:   // resolved by the caller; dense if not
    case Dispatch::kFused:  // refused by reset()
    case Dispatch::kDense: {
      auto h = torch::matmul(x_adapter, lora_A.reshape({e * r, in_features}).t());  // (N, E*R)
      h = (h.view({n, e, r}) * routing.gates.to(dtype).unsqueeze(-1)).view({n, e * r});  // gated
      auto b_all = lora_B.permute({1, 0, 2}).reshape({out_features, e * r});            // (O, E*R)
      return torch::matmul(h, b_all.t()) * s;                                           // (N, O)
    }
    case Dispatch::kSparse: {
      auto groups = group_by_expert(routing);
      auto x_sorted = x_adapter.index_select(0, groups.token);  // (N*K, I), grouped by expert
      std::vector<torch::Tensor> parts;
      for (int64_t i = 0; i < e; ++i) {
        int64_t begin = groups.offsets[i], count = groups.offsets[i + 1] - begin;
        if (count == 0) continue;
        auto xe = x_sorted.narrow(0, begin, count);
        parts.push_back(torch::matmul(torch::matmul(xe, lora_A[i].t()), lora_B[i].t()));  // (count, O)
      }
      auto weighted = torch::cat(parts, 0) * (groups.weight.to(dtype) * s).unsqueeze(1);  // (N*K, O)
      return torch::zeros({n, out_features}, weighted.options()).index_add(0, groups.token, weighted);
    }
    case Dispatch::kNaive: {
      auto y = torch::zeros({n, out_features}, x_adapter.options());
      for (int64_t i = 0; i < e; ++i)  // every expert on every token, weighted by its (mostly zero) gate
        y = y + routing.gates.select(1, i).to(dtype).unsqueeze(1) *
                    torch::matmul(torch::matmul(x_adapter, lora_A[i].t()), lora_B[i].t()) * s;
      return y;
    }
  }
  return {};
}

torch::Tensor MoleLinearImpl::expert_projections(const torch::Tensor& x) {
  const int64_t n = x.size(0), e = options.mole().n_experts(), r = options.mole().rank();
  // Without dropout: the loss is about the experts' subspaces, not one dropout draw (the fused path draws its
  // mask inside its own function).
  auto a = lora_A.reshape({e * r, options.in_features()});            // (E*R, I)
  return torch::matmul(x.to(a.scalar_type()), a.t()).view({n, e, r});  // (N, E, R)
}

torch::Tensor MoleLinearImpl::forward_with_base(LinearImpl& base, const torch::Tensor& x) {
  const MoleOptions& mole = options.mole();
  const int64_t e = mole.n_experts(), r = mole.rank(), in_features = options.in_features();
  // both factors checked here: once routed (statistics recorded), the fused call must not fall back
  if (resolve_dispatch(mole.dispatch(), e, r) != Dispatch::kDense || !fused_lora_applies(base, x, lora_A) ||
      !fused_lora_applies(base, x, lora_B))
    return LinearAdapter::forward_with_base(base, x);
  TORCH_CHECK(x.size(-1) == in_features, "MoLE ", options.layer_name(), ": expected inputs of size ", in_features,
              ", got ", x.sizes());
  auto shape = x.sizes().vec();
  auto flat = x.reshape({-1, in_features});  // (N, I)
  Routing routing = route_and_record(*router, flat, options.layer_name(), mole.losses(),
                                     [&] { return expert_projections(flat); });
  auto b_all = lora_B.permute({1, 0, 2}).reshape({options.out_features(), e * r});  // (O, E*R)
  auto y = fused_lora_linear(base, flat, lora_A.reshape({e * r, in_features}), b_all, routing.gates, scale(),
                             dropout->is_training() ? dropout->p : 0.0);  // (N, O)
  if (shared) y = y + shared->delta(flat);
  shape.back() = options.out_features();
  return y.view(shape);
}

torch::Tensor MoleLinearImpl::delta(const torch::Tensor& x) {
  const int64_t in_features = options.in_features();
  const MoleOptions& mole = options.mole();
  TORCH_CHECK(x.size(-1) == in_features, "MoLE ", options.layer_name(), ": expected inputs of size ", in_features,
              ", got ", x.sizes());
  auto shape = x.sizes().vec();
  auto flat = x.reshape({-1, in_features});  // (N, I)
  Routing routing = route_and_record(*router, flat, options.layer_name(), mole.losses(),
                                     [&] { return expert_projections(flat); });
  // dense materialises (N, E * R): the per-token intermediate is the rank
  auto y = routed_delta(dropout(flat), routing, resolve_dispatch(mole.dispatch(), mole.n_experts(), mole.rank()));
  if (shared) y = y + shared->delta(flat).to(y.scalar_type());
  shape.back() = options.out_features();
  return y.to(x.scalar_type()).view(shape);
}

}  // namespace mole
