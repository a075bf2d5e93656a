// The routed part of an FFN-level MoLE block as one autograd function with a hand-written backward
// (docs/MOE.md "The fused FFN form"). Given the frozen pre-activations g0 = W_g x, u0 = W_u x (computed once
// for all experts, outside), it computes for every token t and each of its K chosen experts i
//     h_i   = act(g0 + s B^g_i A^g_i xa) * (u0 + s B^u_i A^u_i xa)
//     mixed = sum_i G_i h_i                         (N, F): the caller applies the frozen W_d once to it
//     down  = sum_i G_i s B^d_i A^d_i h_i           (N, D): the down-projection LoRA of each expert
// with the (token, slot) assignments sorted by expert so that every expert's LoRA GEMMs run over one
// contiguous segment. It saves only (A, F) pre-activations and (A, R) low-rank activations (A = N*K
// assignments), never an (N, E, F) tensor, and recomputes h in the backward.
//
// N=tokens D=hidden F=FFN width E=experts R=rank K=top-k A=N*K assignments
#pragma once

#include <cstdint>

#include <torch/types.h>

#include "core/activation.h"

namespace mole {

struct FusedMoleFfnWeights {
  torch::Tensor gate_A, up_A;  // (E, R, D)
  torch::Tensor gate_B, up_B;  // (E, F, R)
  torch::Tensor down_A;        // (E, R, F)
  torch::Tensor down_B;        // (E, D, R)
  double scale = 1.0;          // s, the LoRA scale
  Activation act = Activation::kSilu;
};

struct FusedMoleFfnOutput {
  torch::Tensor mixed;  // (N, F) sum_i G_i h_i
  torch::Tensor down;   // (N, D) sum_i G_i s B^d_i A^d_i h_i
};

// g0, u0 (N, F); xa (N, D) the adapters' input (after dropout); topk_weight (N, K) the gate weights G;
// topk_index (N, K) int64 the chosen experts. Every floating input in one dtype; gradients flow to g0, u0, xa,
// topk_weight and the six weight tensors.
FusedMoleFfnOutput fused_mole_ffn(const torch::Tensor& g0, const torch::Tensor& u0, const torch::Tensor& xa,
                                  const torch::Tensor& topk_weight, const torch::Tensor& topk_index,
                                  const FusedMoleFfnWeights& weights);

}  // namespace mole
