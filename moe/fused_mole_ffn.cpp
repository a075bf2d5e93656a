#include "moe/fused_mole_ffn.h"

#include <vector>

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/torch.h>

#include "core/fused_ops.h"

// N=tokens D=hidden F=FFN width E=experts R=rank K=top-k A=N*K assignments, sorted by expert
namespace mole {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The (token, slot) assignments of a routing sorted by expert: expert e owns rows [offsets[e], offsets[e+1]).
struct Assignments {
  Tensor order;                  // (A) position of each sorted assignment in the token-major (N*K) layout
  Tensor inverse;                // (A) position in the sorted order of each token-major assignment
  Tensor token;                  // (A) its token
  std::vector<int64_t> offsets;  // E+1
  int64_t k = 1;

  static Assignments sort(const Tensor& topk_index, int64_t n_experts) {
    Assignments a;
    a.k = topk_index.size(1);
    auto flat = topk_index.reshape({-1});  // (N*K) token-major
    a.order = std::get<1>(torch::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false));
    a.inverse = torch::empty_like(a.order).index_copy_(0, a.order, torch::arange(a.order.numel(), a.order.options()));
    a.token = a.k == 1 ? a.order : torch::div(a.order, a.k, "floor");
    auto counts = torch::bincount(flat, {}, n_experts).cpu();  // the one host sync of the layer
    auto c = counts.accessor<int64_t, 1>();
    a.offsets.assign(1, 0);
    for (int64_t e = 0; e < n_experts; ++e) a.offsets.push_back(a.offsets.back() + c[e]);
    return a;
  }
  int64_t begin(int64_t e) const { return offsets[e]; }
  int64_t count(int64_t e) const { return offsets[e + 1] - offsets[e]; }

  // rows (A, C) summed back into their tokens (N, C): gathered into the token-major order (a parallel row copy;
  // CPU index_add_ adds row by row) and summed over each token's K slots.
  Tensor scatter(const Tensor& rows) const {
    auto token_major = rows.index_select(0, inverse);  // (N*K, C)
    if (k == 1) return token_major;
    auto slots = token_major.view({-1, k, rows.size(1)});  // (N, K, C)
    if (k == 2) return slots.select(1, 0) + slots.select(1, 1);  // an add runs faster than a reduction
    return slots.sum(1);
  }

  // A gradient (E, ...) of per-expert factors: the GEMM of each expert with tokens writes its slice whole, so
  // only the experts without tokens need zeros.
  Tensor expert_grad(const Tensor& like) const {
    auto g = torch::empty_like(like);
    for (int64_t e = 0; e + 1 < int64_t(offsets.size()); ++e)
      if (count(e) == 0) g[e].zero_();
    return g;
  }
};

// out = a b, written into a view of a larger tensor (a segment's rows, one expert's gradient)
void mm_into(Tensor out, const Tensor& a, const Tensor& b) { at::mm_out(out, a, b); }

struct FusedMoleFfnFunction : public torch::autograd::Function<FusedMoleFfnFunction> {
  static variable_list forward(AutogradContext* ctx, Tensor g0, Tensor u0, Tensor xa, Tensor topk_weight,
                               Tensor topk_index, Tensor gate_A, Tensor gate_B, Tensor up_A, Tensor up_B,
                               Tensor down_A, Tensor down_B, double s, int64_t act_id) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);  // one dtype, given
    const auto act = static_cast<Activation>(act_id);
    const int64_t n = xa.size(0), e_count = gate_A.size(0), r = gate_A.size(1);
    auto a = Assignments::sort(topk_index, e_count);
    auto w = topk_weight.reshape({-1}).index_select(0, a.order).unsqueeze(1);  // (A, 1) gate weights
    auto xs = xa.index_select(0, a.token);                                      // (A, D)
    auto gs = g0.index_select(0, a.token);  // (A, F), becomes the expert's gate pre-activation in place
    auto us = u0.index_select(0, a.token);  // (A, F)
    const int64_t rows = xs.size(0);
    auto a_g = torch::empty({rows, r}, xs.options());  // (A, R) A^g_i xa
    auto a_u = torch::empty({rows, r}, xs.options());
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t b = a.begin(e), c = a.count(e);
      if (c == 0) continue;
      auto x_e = xs.narrow(0, b, c);
      auto ag_e = a_g.narrow(0, b, c), au_e = a_u.narrow(0, b, c);
      mm_into(ag_e, x_e, gate_A[e].t());
      mm_into(au_e, x_e, up_A[e].t());
      gs.narrow(0, b, c).addmm_(ag_e, gate_B[e].t(), 1.0, s);  // g0 + s B^g A^g xa
      us.narrow(0, b, c).addmm_(au_e, up_B[e].t(), 1.0, s);
    }
    auto h = gated_activation_forward(act, gs, us);  // (A, F) h_i
    auto a_d = torch::empty({rows, r}, xs.options());  // (A, R) A^d_i h_i
    auto down_rows = torch::empty({rows, down_B.size(1)}, xs.options());  // (A, D)
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t b = a.begin(e), c = a.count(e);
      if (c == 0) continue;
      auto ad_e = a_d.narrow(0, b, c);
      mm_into(ad_e, h.narrow(0, b, c), down_A[e].t());
      mm_into(down_rows.narrow(0, b, c), ad_e, down_B[e].t());
    }
    auto mixed = a.scatter(h.mul_(w));                 // sum_i G_i h_i
    auto down = a.scatter(down_rows.mul_(w * s));      // sum_i G_i s B^d_i A^d_i h_i

    ctx->save_for_backward({gate_A, gate_B, up_A, up_B, down_A, down_B});
    ctx->saved_data["order"] = a.order;
    ctx->saved_data["inverse"] = a.inverse;
    ctx->saved_data["token"] = a.token;
    ctx->saved_data["offsets"] = a.offsets;
    ctx->saved_data["w"] = w;
    ctx->saved_data["xs"] = xs;
    ctx->saved_data["gs"] = gs;
    ctx->saved_data["us"] = us;
    ctx->saved_data["a_g"] = a_g;
    ctx->saved_data["a_u"] = a_u;
    ctx->saved_data["a_d"] = a_d;
    ctx->saved_data["s"] = s;
    ctx->saved_data["act"] = act_id;
    ctx->saved_data["n"] = n;
    ctx->saved_data["k"] = topk_index.size(1);
    return {mixed, down};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto saved = ctx->get_saved_variables();
    const Tensor &gate_A = saved[0], &gate_B = saved[1], &up_A = saved[2], &up_B = saved[3], &down_A = saved[4],
                 &down_B = saved[5];
    Assignments a;
    a.order = ctx->saved_data["order"].toTensor();
    a.inverse = ctx->saved_data["inverse"].toTensor();
    a.token = ctx->saved_data["token"].toTensor();
    a.offsets = ctx->saved_data["offsets"].toIntVector();
    const int64_t n = ctx->saved_data["n"].toInt(), k = ctx->saved_data["k"].toInt();
    a.k = k;
    auto w = ctx->saved_data["w"].toTensor();  // (A, 1)
    auto gs = ctx->saved_data["gs"].toTensor(), us = ctx->saved_data["us"].toTensor();
    auto a_g = ctx->saved_data["a_g"].toTensor(), a_u = ctx->saved_data["a_u"].toTensor();
    auto a_d = ctx->saved_data["a_d"].toTensor();
    const double s = ctx->saved_data["s"].toDouble();
    const auto act = static_cast<Activation>(ctx->saved_data["act"].toInt());
    const int64_t e_count = gate_A.size(0), rows = gs.size(0), d = down_B.size(1), f = gs.size(1);
    auto opts = gs.options();

    // Upstream gradients at each assignment; an output nobody used has none.
    auto d_mixed = grad_out[0].defined() ? grad_out[0].index_select(0, a.token) : torch::zeros({rows, f}, opts);
    auto d_down = grad_out[1].defined() ? grad_out[1].index_select(0, a.token) : torch::zeros({rows, d}, opts);

    auto h = gated_activation_forward(act, gs, us);  // (A, F) recomputed

    // down = G s B^d (A^d h): gradients of B^d, A^d, of h and of the gate weight G.
    auto g_down_A = a.expert_grad(down_A), g_down_B = a.expert_grad(down_B);
    auto t_d = torch::empty({rows, a_d.size(1)}, opts);  // (A, R) d_down B^d
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t b = a.begin(e), c = a.count(e);
      if (c == 0) continue;
      mm_into(t_d.narrow(0, b, c), d_down.narrow(0, b, c), down_B[e]);
    }
    // dG = <d_mixed, h> + s <d_down B^d, A^d h>
    auto d_weight = (d_mixed * h).sum(1, /*keepdim=*/true).add_((t_d * a_d).sum(1, true), s);  // (A, 1)
    auto d_ad = t_d.mul_(w * s);              // (A, R) gradient of A^d h
    auto d_h = d_mixed.mul_(w);               // (A, F) gradient of h: G d_mixed + (A^d)^T d_ad
    auto a_d_weighted = a_d * (w * s);        // (A, R)
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t b = a.begin(e), c = a.count(e);
      if (c == 0) continue;
      auto d_ad_e = d_ad.narrow(0, b, c);
      mm_into(g_down_B[e], d_down.narrow(0, b, c).t(), a_d_weighted.narrow(0, b, c));  // (D, R)
      mm_into(g_down_A[e], d_ad_e.t(), h.narrow(0, b, c));                               // (R, F)
      d_h.narrow(0, b, c).addmm_(d_ad_e, down_A[e]);
    }

    // h = act(gs) * us
    auto [d_gs, d_us] = gated_activation_backward(act, gs, us, d_h);  // (A, F) each

    // gs = g0 + s B^g A^g xa (and us alike): gradients of the LoRA pair, of xa and of g0, u0.
    auto g_gate_A = a.expert_grad(gate_A), g_gate_B = a.expert_grad(gate_B);
    auto g_up_A = a.expert_grad(up_A), g_up_B = a.expert_grad(up_B);
    const bool want_x = ctx->needs_input_grad(2);
    auto xs = ctx->saved_data["xs"].toTensor();                         // (A, D)
    auto d_xs = want_x ? torch::empty({rows, d}, opts) : torch::Tensor();  // (A, D)
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t b = a.begin(e), c = a.count(e);
      if (c == 0) continue;
      auto x_e = xs.narrow(0, b, c);
      auto dg_e = d_gs.narrow(0, b, c), du_e = d_us.narrow(0, b, c);
      auto d_ag = torch::mm(dg_e, gate_B[e]).mul_(s);  // (c, R)
      auto d_au = torch::mm(du_e, up_B[e]).mul_(s);
      mm_into(g_gate_B[e], dg_e.t(), a_g.narrow(0, b, c) * s);  // (F, R)
      mm_into(g_up_B[e], du_e.t(), a_u.narrow(0, b, c) * s);
      mm_into(g_gate_A[e], d_ag.t(), x_e);  // (R, D)
      mm_into(g_up_A[e], d_au.t(), x_e);
      if (want_x) {
        auto dx_e = d_xs.narrow(0, b, c);
        mm_into(dx_e, d_ag, gate_A[e]);
        dx_e.addmm_(d_au, up_A[e]);
      }
    }
    auto d_g0 = ctx->needs_input_grad(0) ? a.scatter(d_gs) : Tensor();
    auto d_u0 = ctx->needs_input_grad(1) ? a.scatter(d_us) : Tensor();
    auto d_xa = want_x ? a.scatter(d_xs) : Tensor();
    // the gate weights back in the token-major (N, K) layout
    auto d_topk = d_weight.squeeze(1).index_select(0, a.inverse).view({n, k});
    return {d_g0, d_u0, d_xa, d_topk, Tensor(), g_gate_A, g_gate_B, g_up_A, g_up_B, g_down_A, g_down_B,
            Tensor(), Tensor()};
  }
};

}  // namespace

FusedMoleFfnOutput fused_mole_ffn(const torch::Tensor& g0, const torch::Tensor& u0, const torch::Tensor& xa,
                                  const torch::Tensor& topk_weight, const torch::Tensor& topk_index,
                                  const FusedMoleFfnWeights& weights) {
  const int64_t n = xa.size(0), f = g0.size(1), e = weights.gate_A.size(0);
  TORCH_CHECK(xa.dim() == 2 && g0.sizes() == u0.sizes() && g0.size(0) == n, "fused MoLE FFN: g0, u0 must be (",
              n, ", F) and xa (N, D); got ", g0.sizes(), ", ", u0.sizes(), ", ", xa.sizes());
  TORCH_CHECK(topk_index.dim() == 2 && topk_index.size(0) == n && topk_weight.sizes() == topk_index.sizes(),
              "fused MoLE FFN: topk_index and topk_weight must be (", n, ", K); got ", topk_index.sizes(), ", ",
              topk_weight.sizes());
  TORCH_CHECK(weights.gate_B.size(0) == e && weights.gate_B.size(1) == f, "fused MoLE FFN: gate_B must be (", e,
              ", ", f, ", R); got ", weights.gate_B.sizes());
  // Under autocast everything runs in its dtype (bf16), else in g0's; the casts are autograd's, so gradients
  // reach the weights in their own dtype.
  const auto device = g0.device().type();
  const auto dtype = at::autocast::is_autocast_enabled(device) ? at::autocast::get_autocast_dtype(device)
                                                                : g0.scalar_type();
  auto in = [&](const torch::Tensor& t) { return t.to(dtype).contiguous(); };
  auto out = FusedMoleFfnFunction::apply(in(g0), in(u0), in(xa), in(topk_weight), topk_index, in(weights.gate_A),
                                         in(weights.gate_B), in(weights.up_A), in(weights.up_B), in(weights.down_A),
                                         in(weights.down_B), weights.scale, static_cast<int64_t>(weights.act));
  return {out[0], out[1]};
}

}  // namespace mole
