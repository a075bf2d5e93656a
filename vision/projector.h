// Projector from vision features to the language model's token space.
// Sources: LLaVA llava/model/multimodal_projector/builder.py ("linear", "mlp2x_gelu") and transformers'
// LlavaMultiModalProjector (linear_1 -> act -> linear_2, bias per multimodal_projector_bias).
//
// N=features (tokens) Dv=vision features in  Dt=text hidden
#pragma once

#include <cstdint>
#include <string>

#include <torch/nn/module.h>

#include "core/activation.h"
#include "core/linear.h"

namespace mole {

struct ProjectorOptions {
  ProjectorOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  /// "mlp2x_gelu" (two layers, LLaVA-1.5) or "linear" (one layer, LLaVA-1.0).
  TORCH_ARG(std::string, type) = "mlp2x_gelu";
  /// Activation between the two layers (projector_hidden_act).
  TORCH_ARG(Activation, act) = Activation::kGelu;
  /// multimodal_projector_bias.
  TORCH_ARG(bool, bias) = true;
};

class ProjectorImpl : public torch::nn::Module {
 public:
  explicit ProjectorImpl(const ProjectorOptions& options);
  torch::Tensor forward(const torch::Tensor& features);  // (..., Dv) -> (..., Dt)

  ProjectorOptions options;
  Linear linear_1 = nullptr;
  Linear linear_2 = nullptr;  // nullptr for "linear"
};
TORCH_MODULE(Projector);

}  // namespace mole
