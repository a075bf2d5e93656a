// Linear-level MoLE: a router per adapted Linear sends each token to its top-k LoRA experts, which share the
// frozen W (docs/MOE.md "Layers"):  y = W x + sum_{i in TopK(x)} G(x)_i * s * B_i A_i drop(x)  (+ shared expert).
// Attaches to any mole::Linear (q/k/v/o, gate/up/down, vision tower, projector).
//
// N=tokens I=in O=out E=experts R=rank K=top-k
#pragma once

#include <cstdint>
#include <string>

#include "core/dropout.h"
#include "core/linear.h"
#include "moe/lora.h"
#include "moe/mole_options.h"
#include "moe/router.h"

namespace mole {

struct MoleLinearOptions {
  MoleLinearOptions(int64_t in_features, int64_t out_features, MoleOptions mole = {})
      : in_features_(in_features), out_features_(out_features), mole_(std::move(mole)) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(MoleOptions, mole);
  /// The name statistics and losses are recorded under, e.g. language_model.model.layers.3.self_attn.q_proj.
  TORCH_ARG(std::string, layer_name) = "";
};

class MoleLinearImpl : public LinearAdapter {
 public:
  explicit MoleLinearImpl(const MoleLinearOptions& options);
  void reset();
  void reset_parameters();
  torch::Tensor delta(const torch::Tensor& x) override;  // (..., I) -> (..., O)
  // With dense dispatch on the CPU in float32: W x + b and the gated experts as one fused LoRA function
  // (moe/lora.h fused_lora_linear, all experts' A and B side by side); else base + delta.
  torch::Tensor forward_with_base(LinearImpl& base, const torch::Tensor& x) override;
  // The routed delta for flattened tokens with a given routing and dispatch (used by delta and by tests).
  torch::Tensor routed_delta(const torch::Tensor& x, const Routing& routing, Dispatch dispatch);  // (N, I) -> (N, O)
  double scale() const { return lora_scale(options.mole().alpha(), options.mole().rank(), options.mole().rslora()); }
  // What the contrastive loss compares: every expert's A_i x, one GEMM over all experts. (N, I) -> (N, E, R)
  torch::Tensor expert_projections(const torch::Tensor& x);

  MoleLinearOptions options;
  Router router = nullptr;
  torch::Tensor lora_A;  // (E, R, I)
  torch::Tensor lora_B;  // (E, O, R)
  Lora shared = nullptr;  // optional always-on expert
  Dropout dropout = nullptr;  // on the adapter input (core/dropout.h)
};
TORCH_MODULE(MoleLinear);

}  // namespace mole
