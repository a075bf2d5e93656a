// What a training run leaves behind, and loading it back: every checkpoint folder and a run's final/ folder hold
// model.json (how to rebuild the model: the base checkpoint, an init config or the parts it was assembled from,
// the projector weights put on the base, the adapter config, the tokenizer, the conversation template and the
// image preprocessing) beside trainable.safetensors (the trained parameters, by their full module names).
// Rebuilding is: base (or init, or parts) -> projector -> attach adapters -> trained weights over them. eval-vqa,
// routes and generate take a run folder, a checkpoint folder or a plain llava-hf folder alike.
//
// final/ also carries the user-facing forms: for pretrain, and for align from parts, a whole llava-hf folder
// (config.json, model.safetensors, tokenizer, preprocessor_config.json) that transformers reads; for align the
// projector (projector.safetensors, as LLaVA's mm_projector.bin); for finetune the adapter folder (adapter/, mole's
// format, or PEFT's for plain LoRA in adapter_peft/).
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "data/image.h"
#include "language/conversation.h"
#include "language/tokenizer.h"
#include "model/llava.h"
#include "model/llava_assembly.h"

namespace mole {

struct ModelSpec {
  std::string stage;                 // pretrain | align | finetune | base (a plain checkpoint)
  std::string base;                  // llava-hf or original LLaVA folder; "" when built from `init` or parts
  nlohmann::json init;               // llava config.json object (pretraining from scratch)
  std::string vision_tower;          // CLIP folder: built from parts, or the tower of an original LLaVA base
  std::string language_model;        // LLaMA / Mistral folder: built from parts (model/llava_assembly.h)
  nlohmann::json projector_config;   // with language_model: the projector's llava config keys, or null
  std::string projector;             // safetensors of multi_modal_projector.* put on the base, or ""
  nlohmann::json adapter;            // AdapterConfig object, or null
  std::string tokenizer;             // tokenizer folder
  std::string conversation_template = "vicuna_v1";
  nlohmann::json image_processor;    // preprocessor_config.json values (ImageProcessorConfig::to_json)

  nlohmann::json to_json() const;
  static ModelSpec from_json(const nlohmann::json& j, const std::string& where);
};

struct TrainedModel {
  ModelSpec spec;
  Llava model = nullptr;
  std::shared_ptr<const Tokenizer> tokenizer;
  ImageProcessorConfig image_config;
  Template conversation_template = Template::kVicunaV1;
  std::string source;  // the folder it was loaded from
};

// The model the spec describes, without trained weights: base loaded (or init, randomly initialised with
// init_llava_for_pretraining under the current torch seed, or assembled from parts with a projector initialised
// under it), projector loaded, adapters attached. Every base parameter is frozen; adapters are trainable. A base
// checkpoint (or the parts) is read into base_dtype (bfloat16 holds a 7B base in half the memory, never in float32
// on the way); the projector and the adapters are float32 whatever it is.
TrainedModel build_model(const ModelSpec& spec, torch::Device device = torch::kCPU,
                         torch::ScalarType base_dtype = torch::kFloat32);

// PATH is a run folder (its final/ is used), a checkpoint or final folder (model.json), or a llava-hf folder
// (config.json; tokenizer and preprocessor_config.json from the same folder, template vicuna_v1 unless given).
// The model is returned in eval mode.
TrainedModel load_trained(const std::string& path, torch::Device device = torch::kCPU);

// The parts a spec built from separate checkpoints names (vision_tower set): an original LLaVA base, or
// language_model + projector_config; the <image> and pad ids are the tokenizer's.
LlavaParts parts_of(const ModelSpec& spec, const Tokenizer& tokenizer);

// The folder load_trained would read for PATH (PATH/final for a run folder, else PATH).
std::string resolve_model_dir(const std::string& path);

// Image preprocessing for a model: `given` (a preprocessor_config object) when not null, else DIR's
// preprocessor_config.json when there is one, else the vision tower's own size (shortest edge and crop =
// image_size) with CLIP's mean and std and LLaVA's pad-to-square.
ImageProcessorConfig image_config_for(const LlavaConfig& config, const nlohmann::json& given, const std::string& dir);

}  // namespace mole
