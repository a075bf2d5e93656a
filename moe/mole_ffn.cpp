#include "moe/mole_ffn.h"

#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "moe/fused_mole_ffn.h"

// N=tokens D=hidden F=FFN width E=experts R=rank K=top-k A=assignments (N*K, grouped by expert)
namespace mole {

MoleFfnImpl::MoleFfnImpl(const MoleFfnOptions& options_) : options(options_) { reset(); }

void MoleFfnImpl::reset() {
  const MoleOptions& mole = options.mole();
  int64_t e = mole.n_experts(), r = mole.rank(), d = options.hidden(), f = options.ffn();
  TORCH_CHECK(e >= 1 && r >= 1, "MoLE FFN: n_experts and rank must be >= 1");
  router = register_module("router", Router(mole.router(d)));
  gate_A = register_parameter("gate_A", torch::empty({e, r, d}));
  gate_B = register_parameter("gate_B", torch::empty({e, f, r}));
  up_A = register_parameter("up_A", torch::empty({e, r, d}));
  up_B = register_parameter("up_B", torch::empty({e, f, r}));
  down_A = register_parameter("down_A", torch::empty({e, r, f}));
  down_B = register_parameter("down_B", torch::empty({e, d, r}));
  dropout = register_module("dropout", Dropout(mole.dropout()));
  if (mole.shared_expert()) {
    shared_gate = register_module("shared_gate", Lora(lora_options(d, f, mole)));
    shared_up = register_module("shared_up", Lora(lora_options(d, f, mole)));
    shared_down = register_module("shared_down", Lora(lora_options(f, d, mole)));
  }
  if (!NoInitGuard::active()) reset_parameters();
}

void MoleFfnImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (auto* a : {&gate_A, &up_A, &down_A})
    for (int64_t i = 0; i < options.mole().n_experts(); ++i)
      torch::nn::init::kaiming_uniform_((*a)[i], std::sqrt(5.0));
  for (auto* b : {&gate_B, &up_B, &down_B}) b->zero_();  // every expert starts as the frozen FFN
}

namespace {
// s * (x A^T) B^T for one expert: (M, in) -> (M, out)
torch::Tensor low_rank(const torch::Tensor& x, const torch::Tensor& a, const torch::Tensor& b, double s) {
  return torch::matmul(torch::matmul(x, a.t()), b.t()) * s;
}
}  // namespace

torch::Tensor MoleFfnImpl::mixture(const torch::Tensor& x, const GatedFfnBase& base, const Routing& routing,
                                   Dispatch dispatch) {
  const int64_t n = x.size(0), e = options.mole().n_experts(), r = options.mole().rank();
  const int64_t hidden = options.hidden(), ffn = options.ffn();
  const Activation act = base.act;  // the block's own (SwiGLU: silu)
  auto dtype = gate_A.scalar_type();
  double s = scale();
  auto x_adapter = dropout(x).to(dtype);  // (N, D) what the LoRA deltas see
  auto gates = routing.gates.to(dtype);   // (N, E)
  const auto& down_weight = base.down_proj.weight;
  const auto& down_bias = base.down_proj.bias;

  if (dispatch == Dispatch::kNaive) {
    // Reference: every expert is a whole FFN run on every token, nothing shared, weighted by its gate.
    auto y = torch::zeros({n, hidden}, x_adapter.options());
    for (int64_t i = 0; i < e; ++i) {
      auto g = base.gate_proj.base_forward(x).to(dtype) + low_rank(x_adapter, gate_A[i], gate_B[i], s);
      auto u = base.up_proj.base_forward(x).to(dtype) + low_rank(x_adapter, up_A[i], up_B[i], s);
      if (shared_gate) g = g + shared_gate->delta(x).to(dtype), u = u + shared_up->delta(x).to(dtype);
      auto h = apply_activation(act, g) * u;  // (N, F)
      auto out = base.down_proj.base_forward(h.to(x.scalar_type())).to(dtype) + low_rank(h, down_A[i], down_B[i], s);
      if (shared_down) out = out + shared_down->delta(h).to(dtype);
      y = y + gates.select(1, i).unsqueeze(1) * out;
    }
    return y;
  }

  // g = W_g x, u = W_u x once for every expert (MixLoRA's saving), with the shared expert folded in.
  auto g = base.gate_proj.base_forward(x).to(dtype);  // (N, F)
  auto u = base.up_proj.base_forward(x).to(dtype);    // (N, F)
  if (shared_gate) g = g + shared_gate->delta(x).to(dtype), u = u + shared_up->delta(x).to(dtype);

  torch::Tensor mixed, down_delta;  // sum_i G_i h_i (N, F); sum_i G_i dD_i h_i (N, D)
  if (dispatch == Dispatch::kFused) {  // one autograd function, experts over sorted contiguous segments
    auto out = fused_mole_ffn(g, u, x_adapter, routing.topk_weight.to(dtype), routing.topk_index,
                              {gate_A, up_A, gate_B, up_B, down_A, down_B, s, act});
    mixed = out.mixed;
    down_delta = out.down;
  } else if (dispatch == Dispatch::kSparse) {
    auto groups = group_by_expert(routing);
    auto x_sorted = x_adapter.index_select(0, groups.token);  // (A, D) grouped by expert
    auto g_sorted = g.index_select(0, groups.token);          // (A, F)
    auto u_sorted = u.index_select(0, groups.token);          // (A, F)
    std::vector<torch::Tensor> h_parts, down_parts;           // per non-empty expert: h_i, dD_i h_i
    for (int64_t i = 0; i < e; ++i) {
      int64_t begin = groups.offsets[i], count = groups.offsets[i + 1] - begin;
      if (count == 0) continue;
      auto xe = x_sorted.narrow(0, begin, count);
      auto he = apply_activation(act, g_sorted.narrow(0, begin, count) + low_rank(xe, gate_A[i], gate_B[i], s)) *
                (u_sorted.narrow(0, begin, count) + low_rank(xe, up_A[i], up_B[i], s));  // h_i (count, F)
      h_parts.push_back(he);
      down_parts.push_back(low_rank(he, down_A[i], down_B[i], s));  // dD_i h_i (count, D)
    }
    auto w = groups.weight.to(dtype).unsqueeze(1);  // (A, 1)
    mixed = torch::zeros({n, ffn}, x_adapter.options()).index_add(0, groups.token, torch::cat(h_parts, 0) * w);
    down_delta =
        torch::zeros({n, hidden}, x_adapter.options()).index_add(0, groups.token, torch::cat(down_parts, 0) * w);
  } else {  // dense: all experts on all tokens in batched GEMMs, gated by zeros outside the top-k
    auto dg = torch::einsum(
        "ner,efr->nef", {torch::matmul(x_adapter, gate_A.reshape({e * r, hidden}).t()).view({n, e, r}), gate_B});
    auto du = torch::einsum(
        "ner,efr->nef", {torch::matmul(x_adapter, up_A.reshape({e * r, hidden}).t()).view({n, e, r}), up_B});
    auto h = apply_activation(act, g.unsqueeze(1) + dg * s) * (u.unsqueeze(1) + du * s);  // (N, E, F)
    mixed = (gates.unsqueeze(-1) * h).sum(1);                                              // (N, F)
    auto hd = torch::einsum("nef,erf->ner", {h, down_A}) * gates.unsqueeze(-1);            // (N, E, R)
    down_delta = torch::einsum("ner,edr->nd", {hd, down_B}) * s;                           // (N, D)
  }
  // W_d (sum_i G_i h_i): one frozen down-projection for all experts; a bias is weighted by sum_i G_i.
  auto y = torch::matmul(mixed.to(down_weight.scalar_type()), down_weight.t()).to(dtype) + down_delta;
  if (down_bias.defined()) y = y + routing.topk_weight.sum(1, true).to(dtype) * down_bias.to(dtype);
  if (shared_down) y = y + shared_down->delta(mixed).to(dtype);
  return y;
}

torch::Tensor MoleFfnImpl::expert_projections(const torch::Tensor& x) {
  const int64_t n = x.size(0), e = options.mole().n_experts(), r = options.mole().rank(), d = options.hidden();
  // Without dropout: the loss is about the experts' subspaces, not one dropout draw.
  auto a = torch::cat({gate_A, up_A}, 1).reshape({e * 2 * r, d});        // (E*2R, D) [gate_A_i; up_A_i] per expert
  return torch::matmul(x.to(a.scalar_type()), a.t()).view({n, e, 2 * r});  // (N, E, 2R)
}

torch::Tensor MoleFfnImpl::forward(const torch::Tensor& x, const GatedFfnBase& base) {
  TORCH_CHECK(x.size(-1) == options.hidden(), "MoLE FFN ", options.layer_name(), ": expected inputs of size ",
              options.hidden(), ", got ", x.sizes());
  auto flat = x.reshape({-1, options.hidden()});  // (N, D)
  const MoleOptions& mole = options.mole();
  Routing routing = route_and_record(*router, flat, options.layer_name(), mole.losses(),
                                     [&] { return expert_projections(flat); });
  Dispatch dispatch = mole.dispatch() == Dispatch::kAuto ? Dispatch::kFused : mole.dispatch();
  return mixture(flat, base, routing, dispatch).to(x.scalar_type()).view(x.sizes());
}

}  // namespace mole
