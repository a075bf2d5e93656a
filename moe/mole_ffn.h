// FFN-level MoLE (LLaVA-MoLE, MixLoRA): one router per gated FFN block; expert i is the frozen FFN with its own
// LoRA deltas on gate, up and down (docs/MOE.md "Layers"):
//     h_i = act(W_g x + dG_i x) * (W_u x + dU_i x)
//     y   = sum_{i in TopK} G_i (W_d h_i + dD_i h_i) = W_d (sum_i G_i h_i) + sum_i G_i dD_i h_i
// W_g x and W_u x are computed once for all experts, and the frozen down projection runs once on the gated
// sum; per expert only low-rank work and k elementwise products over the FFN width remain.
// The optional shared expert is a plain LoRA on gate, up and down that every token uses (weight 1), i.e. it
// is part of the FFN the routed experts share.
// The block's frozen projections come in as a GatedFfnBase (core/linear.h): this file knows no decoder.
// Sources: MixLoRA (Li et al. 2024, mixlora/model.py MixLoraSparseMoe), LLaVA-MoLE (Chen et al. 2024).
//
// N=tokens D=hidden F=FFN width E=experts R=rank K=top-k
#pragma once

#include <cstdint>
#include <string>

#include "core/dropout.h"
#include "core/linear.h"
#include "moe/lora.h"
#include "moe/mole_options.h"
#include "moe/router.h"

namespace mole {

struct MoleFfnOptions {
  MoleFfnOptions(int64_t hidden, int64_t ffn, MoleOptions mole = {})
      : hidden_(hidden), ffn_(ffn), mole_(std::move(mole)) {}
  TORCH_ARG(int64_t, hidden);
  TORCH_ARG(int64_t, ffn);
  TORCH_ARG(MoleOptions, mole);
  /// The name statistics and losses are recorded under, e.g. language_model.model.layers.3.mlp.
  TORCH_ARG(std::string, layer_name) = "";
};

class MoleFfnImpl : public FfnAdapter {
 public:
  explicit MoleFfnImpl(const MoleFfnOptions& options);
  void reset();
  void reset_parameters();
  torch::Tensor forward(const torch::Tensor& x, const GatedFfnBase& base) override;  // (..., D) -> (..., D)
  // For flattened tokens with a given routing and dispatch (used by forward and by tests). (N, D) -> (N, D)
  torch::Tensor mixture(const torch::Tensor& x, const GatedFfnBase& base, const Routing& routing, Dispatch dispatch);
  double scale() const { return lora_scale(options.mole().alpha(), options.mole().rank(), options.mole().rslora()); }
  // What the contrastive loss compares: every expert's [gate_A_i x; up_A_i x] (both act on x), one GEMM over
  // all experts. (N, D) -> (N, E, 2R)
  torch::Tensor expert_projections(const torch::Tensor& x);

  MoleFfnOptions options;
  Router router = nullptr;
  torch::Tensor gate_A, up_A;  // (E, R, D)
  torch::Tensor gate_B, up_B;  // (E, F, R)
  torch::Tensor down_A;        // (E, R, F)
  torch::Tensor down_B;        // (E, D, R)
  Lora shared_gate = nullptr, shared_up = nullptr, shared_down = nullptr;
  Dropout dropout = nullptr;  // on the adapter input (core/dropout.h)
};
TORCH_MODULE(MoleFfn);

}  // namespace mole
