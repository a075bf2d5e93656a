// Linear-level MoLE: a router per adapted Linear sends each token to its top-k LoRA experts, which share the
// frozen W (MOE.md "Layers"):  y = W x + sum_{i in TopK(x)} G(x)_i * s * B_i A_i drop(x)  (+ shared expert).
// Attaches to any mole::Linear (q/k/v/o, gate/up/down, vision tower, projector).
//
// N=tokens I=in O=out E=experts R=rank K=top-k
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/modules/dropout.h>

#include "core/linear.h"
#include "moe/lora.h"
#include "moe/mole_options.h"
#include "moe/router.h"

namespace mole {

class MoleLinearImpl : public LinearAdapter {
 public:
  MoleLinearImpl(int64_t in_features, int64_t out_features, const MoleOptions& options, std::string layer_name = "");
  void reset_parameters();
  torch::Tensor delta(const torch::Tensor& x) override;  // (..., I) -> (..., O)
  // The routed delta for flattened tokens with a given routing and dispatch (used by delta and by tests).
  torch::Tensor routed_delta(const torch::Tensor& x, const Routing& routing, Dispatch dispatch);  // (N, I) -> (N, O)
  double scale() const { return lora_scale(options.alpha(), options.rank(), options.rslora()); }

  int64_t in_features, out_features;
  MoleOptions options;
  std::string layer_name;  // for statistics and losses, e.g. language_model.model.layers.3.self_attn.q_proj
  Router router = nullptr;
  torch::Tensor lora_A;  // (E, R, I)
  torch::Tensor lora_B;  // (E, O, R)
  Lora shared = nullptr;  // optional always-on expert
  torch::nn::Dropout dropout = nullptr;
};
TORCH_MODULE(MoleLinear);

}  // namespace mole
