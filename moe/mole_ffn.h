// FFN-level MoLE (LLaVA-MoLE, MixLoRA): one router per SwiGLU block; expert i is the frozen FFN with its own
// LoRA deltas on gate, up and down (MOE.md "Layers"):
//     h_i = act(W_g x + dG_i x) * (W_u x + dU_i x)
//     y   = sum_{i in TopK} G_i (W_d h_i + dD_i h_i) = W_d (sum_i G_i h_i) + sum_i G_i dD_i h_i
// W_g x and W_u x are computed once for all experts, and the frozen down projection runs once on the gated
// sum; per expert only low-rank work and k elementwise products over the FFN width remain.
// The optional shared expert is a plain LoRA on gate, up and down that every token uses (weight 1), i.e. it
// is part of the FFN the routed experts share.
// Sources: MixLoRA (Li et al. 2024, mixlora/model.py MixLoraSparseMoe), LLaVA-MoLE (Chen et al. 2024).
//
// N=tokens D=hidden F=FFN width E=experts R=rank K=top-k
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/modules/dropout.h>

#include "language/llama_decoder.h"
#include "moe/lora.h"
#include "moe/mole_options.h"
#include "moe/router.h"

namespace mole {

class MoleFfnImpl : public MlpAdapter {
 public:
  MoleFfnImpl(int64_t hidden, int64_t ffn, Activation act, const MoleOptions& options, std::string layer_name = "");
  void reset_parameters();
  torch::Tensor forward(const torch::Tensor& x, LlamaMlpImpl& mlp) override;  // (..., D) -> (..., D)
  // For flattened tokens with a given routing and dispatch (used by forward and by tests). (N, D) -> (N, D)
  torch::Tensor mixture(const torch::Tensor& x, LlamaMlpImpl& mlp, const Routing& routing, Dispatch dispatch);
  double scale() const { return lora_scale(options.alpha(), options.rank(), options.rslora()); }

  int64_t hidden, ffn;
  Activation act;
  MoleOptions options;
  std::string layer_name;  // e.g. language_model.model.layers.3.mlp
  Router router = nullptr;
  torch::Tensor gate_A, up_A;  // (E, R, D)
  torch::Tensor gate_B, up_B;  // (E, F, R)
  torch::Tensor down_A;        // (E, R, F)
  torch::Tensor down_B;        // (E, D, R)
  Lora shared_gate = nullptr, shared_up = nullptr, shared_down = nullptr;
  torch::nn::Dropout dropout = nullptr;
};
TORCH_MODULE(MoleFfn);

}  // namespace mole
