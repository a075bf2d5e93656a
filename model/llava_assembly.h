// A LLaVA assembled from separate checkpoints, the way LLaVA's own stage 1 starts: a CLIP folder gives the vision
// tower (a CLIPVisionModel save, or a CLIPModel whose text tower is left out), a LLaMA / Mistral folder the language
// model (LlamaForCausalLM / MistralForCausalLM), and the projector is freshly initialised as nn.Linear initialises
// itself. Or an original LLaVA folder (liuhaotian/llava-v1.5-*: LLaMA fields at the top of config.json plus mm_*
// keys, weights model.layers..., lm_head, model.mm_projector...) with the CLIP folder its mm_vision_tower names,
// since that tower is not inside it.
// Sources: LLaVA llava/model/llava_arch.py (LlavaMetaModel.initialize_vision_modules),
// llava/model/multimodal_encoder/clip_encoder.py (CLIPVisionTower.feature_select: select_layer, "patch" /
// "cls_patch"), llava/model/multimodal_projector/builder.py (build_vision_projector); transformers'
// models/llava/convert_llava_weights_to_hf.py (KEYS_TO_MODIFY_MAPPING: the original names -> llava-hf's).
//
// Weight import is the table of model/llava_loader.h with each part's own names: every parameter of the part must
// be in its folder with the shape the config implies, and every tensor of the folder must be used (except a
// CLIPModel's text tower and projections), or the load is refused before a byte is read, naming the folder and
// the tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "model/llava.h"
#include "model/llava_loader.h"

namespace mole {

struct LlavaParts {
  std::string vision_tower;    // CLIP folder (config.json model_type clip or clip_vision_model); always needed
  std::string language_model;  // LLaMA / Mistral folder; "" when `original` gives the language model
  std::string original;        // original LLaVA folder (language model + projector); "" with language_model
  // With language_model: llava config.json's top-level keys that decide the projector and the features it gets
  // (projector_config_keys()); absent keys take LlavaConfig's defaults.
  nlohmann::json projector_config = nlohmann::json::object();
  int64_t image_token_index = -1;  // the tokenizer's <image>, used unless projector_config gives one
  int64_t pad_token_id = -1;       // the tokenizer's pad, used when the language model's config names none
  // The tokenizer's size. When the language model has fewer rows (a stock Vicuna / LLaMA given <image> and <pad>),
  // its vocabulary grows to this rounded up to a multiple of 64, as transformers' convert_llava_weights_to_hf.py
  // pads it; the new rows of embed_tokens and lm_head are the mean of the old ones (the converter samples around
  // that mean with 1e-5 of their covariance; the mean alone keeps it deterministic).
  int64_t min_vocab_size = 0;
};

// The keys projector_config may hold: mm_projector_type, multimodal_projector_bias, projector_hidden_act,
// vision_feature_layer, vision_feature_select_strategy, image_token_index.
const std::vector<std::string>& projector_config_keys();

// DIR/config.json of a CLIP folder: CLIPVisionConfig's fields from the top level (model_type clip_vision_model)
// or from vision_config (model_type clip; a legacy vision_config_dict overrides it, as CLIPConfig.__init__ does).
VisionConfig read_clip_vision_config(const std::string& dir);
// DIR/config.json of a LlamaForCausalLM / MistralForCausalLM folder (model_type llama or mistral).
TextConfig read_language_model_config(const std::string& dir);
// Whether DIR/config.json is the original LLaVA layout: no text_config, and mm_hidden_size or mm_vision_tower.
bool is_original_llava(const std::string& dir);
// An original LLaVA folder's image_aspect_ratio as mole's pad_to_square: "pad" pads, "square" or absent does not
// (LLaVA's process_images); any other value (anyres) is refused.
bool original_llava_pads_images(const std::string& dir);

// The llava config of the assembled model, from the config.json files alone. Errors name `where` and the file.
LlavaConfig parts_llava_config(const LlavaParts& parts, const std::string& where = "model parts");

// Builds the model and loads the parts in `dtype` onto `device`, in eval mode with every parameter frozen.
// Without `original` the projector is initialised as torch.nn.Linear does (what LLaVA's build_vision_projector
// gets: kaiming-uniform weights, uniform biases) under the current torch seed, in float32.
LoadedLlava load_llava_parts(const LlavaParts& parts, torch::ScalarType dtype = torch::kFloat32,
                             torch::Device device = torch::kCPU, const std::string& where = "model parts");

}  // namespace mole
