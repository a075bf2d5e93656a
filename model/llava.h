// LLaVA: CLIP vision tower -> projector -> LLaMA-family language model, with each image placeholder token in
// the input ids replaced by one projected patch feature.
// Source: transformers/models/llava/modeling_llava.py (LlavaModel.get_image_features, get_placeholder_mask,
// LlavaForConditionalGeneration). Registered names are the older llava-hf checkpoint layout
// (vision_tower..., multi_modal_projector..., language_model.model..., language_model.lm_head...).
//
// B=batch T=tokens I=images N=features per image Dv=vision hidden Dt=text hidden V=vocab
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "language/generate.h"
#include "language/llama_decoder.h"
#include "moe/routing_context.h"
#include "vision/clip_vit.h"
#include "vision/projector.h"

namespace mole {

// config.json of a llava-hf checkpoint (model_type "llava").
struct LlavaConfig {
  VisionConfig vision;
  TextConfig text;
  int64_t image_token_index = 32000;
  Activation projector_hidden_act = Activation::kGelu;
  std::string projector_type = "mlp2x_gelu";
  std::vector<int64_t> vision_feature_layers = {-2};  // one index, or several concatenated
  std::string vision_feature_select_strategy = "default";  // "default" drops CLS, "full" keeps it
  bool multimodal_projector_bias = true;
  std::string torch_dtype = "float32";  // as saved; informative

  int64_t n_image_features() const {  // tokens per image
    return vision.n_patches() + (vision_feature_select_strategy == "full" ? 1 : 0);
  }
  static LlavaConfig from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

// Named intermediates of one forward, for parity tests and `mole forward --hidden-states`.
struct LlavaTrace {
  std::vector<torch::Tensor> vision_hidden_states;  // CLIP hidden_states tuple (all layers), each (I, P+1, Dv)
  torch::Tensor vision_features;                    // selected layers, after the strategy (I, N, Dv*layers)
  torch::Tensor image_features;                     // projector output (I*N, Dt)
  std::vector<torch::Tensor> hidden_states;         // language model output_hidden_states, each (B, T, Dt)
};

class LlavaImpl : public torch::nn::Module {
 public:
  explicit LlavaImpl(const LlavaConfig& config);

  // pixel_values (I, 3, H, W) -> projected features (I, N, Dt). With a trace, all vision layers are run and kept.
  torch::Tensor image_features(const torch::Tensor& pixel_values, LlavaTrace* trace = nullptr);
  // Token embeddings with every image_token_index position replaced, in order, by the image features.
  // The number of placeholders must equal I * N. pixel_values may be undefined (text only). (B, T) -> (B, T, Dt)
  torch::Tensor embed(const torch::Tensor& input_ids, const torch::Tensor& pixel_values, LlavaTrace* trace = nullptr);
  // Logits (B, T, V). position_ids undefined: derived from the attention mask (cumsum - 1, as generate() does),
  // which equals 0..T-1 for unpadded and right-padded rows.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& pixel_values, const torch::Tensor& position_ids = {},
                        LlavaTrace* trace = nullptr);
  // forward without lm_head: the language model's final normed states (B, T, D), for a loss that needs logits at
  // a few positions only. With `packed` the rows hold whole samples back to back (PackedRows) and position_ids
  // (restarting per sample) must be given.
  torch::Tensor hidden(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                       const torch::Tensor& pixel_values, const torch::Tensor& position_ids = {},
                       const PackedRows* packed = nullptr, LlavaTrace* trace = nullptr);
  // Greedy decoding of left-padded prompts. (B, T) -> (B, N<=max_new_tokens)
  torch::Tensor generate(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                         const torch::Tensor& pixel_values, const GenerateOptions& options);

  // Modality of each token id: image for image_token_index, else text. (B, T) -> (B, T) int64
  // forward and generate open a RoutingScope with it (moe/routing_context.h); a caller that wants the routing
  // decisions (statistics, balance losses) opens a RoutingSinkScope around them.
  torch::Tensor token_modality(const torch::Tensor& input_ids) const;

  LlavaConfig config;
  ClipVisionModel vision_tower = nullptr;
  Projector multi_modal_projector = nullptr;
  LlamaForCausalLM language_model = nullptr;
};
TORCH_MODULE(Llava);

}  // namespace mole
