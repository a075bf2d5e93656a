// CLIP vision transformer, computing exactly what transformers' CLIPVisionModel computes.
// Source: transformers/models/clip/modeling_clip.py (CLIPVisionEmbeddings, CLIPAttention, CLIPMLP,
// CLIPEncoderLayer, CLIPVisionTransformer). Registered names match the checkpoint keys under
// "vision_tower." (vision_model.embeddings.patch_embedding.weight, vision_model.encoder.layers.N.self_attn...).
//
// B=images C=channels H,W=pixels P=patches (+1 with CLS) D=hidden F=mlp hidden
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

#include "core/activation.h"
#include "core/activation_checkpoint.h"
#include "core/limits.h"
#include "core/linear.h"

namespace mole {

// Field list of a CLIPVisionConfig (defaults are transformers').
struct VisionConfig {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t n_layers = 12;
  int64_t n_heads = 12;
  int64_t n_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  int64_t projection_dim = 512;  // CLIP's text-image projection; unused by LLaVA, kept for the record
  double layer_norm_eps = 1e-5;
  Activation hidden_act = Activation::kQuickGelu;

  int64_t n_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  int64_t head_dim() const { return hidden_size / n_heads; }

  // The field list, by CLIPVisionConfig's key names.
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("hidden_size", self.hidden_size, "width of the vision transformer", between(1, kMaxWidth));
    v("intermediate_size", self.intermediate_size, "width of its MLPs", between(1, kMaxWidth * 4));
    v("num_hidden_layers", self.n_layers, "encoder layers", between(1, kMaxLayers));
    v("num_attention_heads", self.n_heads, "attention heads", between(1, kMaxWidth));
    v("num_channels", self.n_channels, "image channels", between(1, 16));
    v("image_size", self.image_size, "input side in pixels", between(1, kMaxImageSide));
    v("patch_size", self.patch_size, "patch side in pixels", between(1, kMaxImageSide));
    v("projection_dim", self.projection_dim, "CLIP's text-image projection (unused by LLaVA)", between(0, kMaxWidth));
    v("layer_norm_eps", self.layer_norm_eps, "LayerNorm epsilon", Bounds{0, 1, true});
    v("hidden_act", self.hidden_act, "MLP activation");
  }
  void validate(const FieldPath& at) const;  // heads divide the width, patches tile the image, sizes > 0
  // vision_config of a llava config.json at `at` (keys mole does not use are ignored, as transformers does).
  static VisionConfig from_json(const nlohmann::json& j, const FieldPath& at);
  nlohmann::json to_json() const;
};

class ClipEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipEmbeddingsImpl(const VisionConfig& config);
  torch::Tensor forward(const torch::Tensor& pixel_values);  // (B, C, H, W) -> (B, P+1, D)

  VisionConfig config;
  torch::Tensor class_embedding;                           // (D)
  torch::nn::Conv2d patch_embedding = nullptr;             // C -> D, kernel = stride = patch, no bias
  torch::nn::Embedding position_embedding = nullptr;       // (P+1, D)
};
TORCH_MODULE(ClipEmbeddings);

class ClipAttentionImpl : public torch::nn::Module {
 public:
  explicit ClipAttentionImpl(const VisionConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, P, D) -> (B, P, D), no mask (every patch sees every patch)

  VisionConfig config;
  Linear q_proj = nullptr, k_proj = nullptr, v_proj = nullptr, out_proj = nullptr;
};
TORCH_MODULE(ClipAttention);

class ClipMlpImpl : public torch::nn::Module {
 public:
  explicit ClipMlpImpl(const VisionConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, P, D) -> (B, P, D)

  VisionConfig config;
  Linear fc1 = nullptr, fc2 = nullptr;
};
TORCH_MODULE(ClipMlp);

class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const VisionConfig& config);
  torch::Tensor forward(const torch::Tensor& x);  // (B, P, D) -> (B, P, D)

  torch::nn::LayerNorm layer_norm1 = nullptr, layer_norm2 = nullptr;
  ClipAttention self_attn = nullptr;
  ClipMlp mlp = nullptr;
};
TORCH_MODULE(ClipEncoderLayer);

// Holds "layers" so that names read vision_model.encoder.layers.N like the checkpoint.
class ClipEncoderImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderImpl(const VisionConfig& config);
  torch::nn::ModuleList layers = nullptr;
  LayerRunner layer_runner;  // how each layer runs (activation checkpointing); unset: directly
};
TORCH_MODULE(ClipEncoder);

class ClipVisionTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipVisionTransformerImpl(const VisionConfig& config);
  ClipEmbeddings embeddings = nullptr;
  torch::nn::LayerNorm pre_layrnorm = nullptr;  // sic: transformers' spelling, kept for the checkpoint names
  ClipEncoder encoder = nullptr;
  torch::nn::LayerNorm post_layernorm = nullptr;
};
TORCH_MODULE(ClipVisionTransformer);

// CLIPVisionModel: the module LLaVA calls its vision tower.
class ClipVisionModelImpl : public torch::nn::Module {
 public:
  explicit ClipVisionModelImpl(const VisionConfig& config);

  // transformers' hidden_states tuple: [0] = embeddings after pre_layrnorm, [i] = output of encoder layer i.
  // Only layers 1..n_layers_run are computed (LLaVA needs layer -2, so the last layer is skipped); the result
  // has n_layers_run + 1 entries. n_layers_run < 0 means all layers. Each (B, P+1, D).
  std::vector<torch::Tensor> hidden_states(const torch::Tensor& pixel_values, int64_t n_layers_run = -1);

  // CLIPVisionModel's pooler_output: post_layernorm of the last layer's CLS token. (B, D)
  torch::Tensor pooled(const torch::Tensor& last_hidden_state);

  VisionConfig config;
  ClipVisionTransformer vision_model = nullptr;
};
TORCH_MODULE(ClipVisionModel);

}  // namespace mole
