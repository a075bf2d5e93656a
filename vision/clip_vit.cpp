#include "vision/clip_vit.h"

#include <torch/torch.h>

#include "core/json_config.h"

namespace mole {

void VisionConfig::validate(const FieldPath& at) const {
  if (hidden_size <= 0 || n_heads <= 0 || hidden_size % n_heads != 0)
    at.fail("hidden_size", "must be a positive multiple of num_attention_heads");
  if (patch_size <= 0 || image_size % patch_size != 0) at.fail("image_size", "must be a multiple of patch_size");
  if (n_layers <= 0 || intermediate_size <= 0) at.fail("num_hidden_layers", "layer counts and sizes must be > 0");
}

VisionConfig VisionConfig::from_json(const json& j, const FieldPath& at) {
  return read_struct<VisionConfig>(j, at, UnknownKeys::kIgnore);
}

json VisionConfig::to_json() const {
  json j = write_fields(*this);
  j["model_type"] = "clip_vision_model";
  return j;
}

ClipEmbeddingsImpl::ClipEmbeddingsImpl(const VisionConfig& config_) : config(config_) {
  class_embedding = register_parameter("class_embedding", torch::randn({config.hidden_size}));
  patch_embedding = register_module(
      "patch_embedding", torch::nn::Conv2d(torch::nn::Conv2dOptions(config.n_channels, config.hidden_size,
                                                                    config.patch_size)
                                               .stride(config.patch_size)
                                               .bias(false)));
  position_embedding =
      register_module("position_embedding", torch::nn::Embedding(config.n_patches() + 1, config.hidden_size));
}

torch::Tensor ClipEmbeddingsImpl::forward(const torch::Tensor& pixel_values) {
  TORCH_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == config.n_channels &&
                  pixel_values.size(2) == config.image_size && pixel_values.size(3) == config.image_size,
              "CLIP vision: pixel_values must be (images, ", config.n_channels, ", ", config.image_size, ", ",
              config.image_size, "), got ", pixel_values.sizes());
  int64_t n_images = pixel_values.size(0);
  auto weight = patch_embedding->weight;
  // patch_embeds = self.patch_embedding(pixel_values.to(dtype=target_dtype)).flatten(2).transpose(1, 2)
  auto patches = patch_embedding(pixel_values.to(weight.dtype())).flatten(2).transpose(1, 2);  // (B, P, D)
  // embeddings = torch.cat([class_embeds, patch_embeds], dim=1) + self.position_embedding(self.position_ids)
  auto cls = class_embedding.to(patches.dtype()).expand({n_images, 1, config.hidden_size});  // (B, 1, D)
  return torch::cat({cls, patches}, 1) + position_embedding->weight.unsqueeze(0);            // (B, P+1, D)
}

ClipAttentionImpl::ClipAttentionImpl(const VisionConfig& config_) : config(config_) {
  int64_t d = config.hidden_size;
  q_proj = register_module("q_proj", Linear(LinearOptions(d, d)));
  k_proj = register_module("k_proj", Linear(LinearOptions(d, d)));
  v_proj = register_module("v_proj", Linear(LinearOptions(d, d)));
  out_proj = register_module("out_proj", Linear(LinearOptions(d, d)));
}

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& x) {
  int64_t b = x.size(0), p = x.size(1);
  auto heads = [&](const torch::Tensor& t) {  // (B, P, D) -> (B, heads, P, head_dim)
    return t.view({b, p, config.n_heads, config.head_dim()}).transpose(1, 2);
  };
  // softmax(q k^T * head_dim^-0.5) v, no mask, no dropout at inference
  auto out = torch::scaled_dot_product_attention(heads(q_proj(x)), heads(k_proj(x)), heads(v_proj(x)));
  return out_proj(out.transpose(1, 2).reshape({b, p, config.hidden_size}));  // (B, P, D)
}

ClipMlpImpl::ClipMlpImpl(const VisionConfig& config_) : config(config_) {
  fc1 = register_module("fc1", Linear(LinearOptions(config.hidden_size, config.intermediate_size)));
  fc2 = register_module("fc2", Linear(LinearOptions(config.intermediate_size, config.hidden_size)));
}

torch::Tensor ClipMlpImpl::forward(const torch::Tensor& x) {
  return fc2(apply_activation(config.hidden_act, fc1(x)));  // (B, P, D)
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const VisionConfig& config) {
  auto ln = torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps);
  self_attn = register_module("self_attn", ClipAttention(config));
  layer_norm1 = register_module("layer_norm1", torch::nn::LayerNorm(ln));
  mlp = register_module("mlp", ClipMlp(config));
  layer_norm2 = register_module("layer_norm2", torch::nn::LayerNorm(ln));
}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& x) {
  auto h = x + self_attn(layer_norm1(x));  // hidden = residual + self_attn(layer_norm1(hidden))
  return h + mlp(layer_norm2(h));          // hidden = residual + mlp(layer_norm2(hidden))
}

ClipEncoderImpl::ClipEncoderImpl(const VisionConfig& config) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.n_layers; ++i) layers->push_back(ClipEncoderLayer(config));
}

ClipVisionTransformerImpl::ClipVisionTransformerImpl(const VisionConfig& config) {
  auto ln = torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps);
  embeddings = register_module("embeddings", ClipEmbeddings(config));
  pre_layrnorm = register_module("pre_layrnorm", torch::nn::LayerNorm(ln));
  encoder = register_module("encoder", ClipEncoder(config));
  post_layernorm = register_module("post_layernorm", torch::nn::LayerNorm(ln));
}

ClipVisionModelImpl::ClipVisionModelImpl(const VisionConfig& config_) : config(config_) {
  vision_model = register_module("vision_model", ClipVisionTransformer(config));
}

std::vector<torch::Tensor> ClipVisionModelImpl::hidden_states(const torch::Tensor& pixel_values,
                                                              int64_t n_layers_run) {
  if (n_layers_run < 0) n_layers_run = config.n_layers;
  TORCH_CHECK(n_layers_run <= config.n_layers, "CLIP vision: asked for ", n_layers_run, " layers of ",
              config.n_layers);
  std::vector<torch::Tensor> states;
  // hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))
  states.push_back(vision_model->pre_layrnorm(vision_model->embeddings(pixel_values)));  // (B, P+1, D)
  auto& encoder = *vision_model->encoder;
  for (int64_t i = 0; i < n_layers_run; ++i) {
    std::shared_ptr<ClipEncoderLayerImpl> layer = encoder.layers->ptr<ClipEncoderLayerImpl>(size_t(i));
    if (encoder.layer_runner) {
      states.push_back(encoder.layer_runner(i, *layer, [layer](const torch::Tensor& h) { return layer->forward(h); },
                                            states.back()));
    } else {
      states.push_back(layer->forward(states.back()));
    }
  }
  return states;
}

torch::Tensor ClipVisionModelImpl::pooled(const torch::Tensor& last_hidden_state) {
  return vision_model->post_layernorm(last_hidden_state.select(1, 0));  // (B, D)
}

}  // namespace mole
