// Loading a llava-hf checkpoint folder: config.json + safetensors (single or sharded), in every tensor-name
// layout in use: older (language_model.model..., vision_tower.vision_model...), newer (transformers >= 4.52:
// model.language_model..., model.vision_tower.vision_model..., lm_head.weight), and either with the flat vision
// tower (vision_tower.embeddings...) that transformers 5 writes. Weight import is a table:
// each of our parameters -> the checkpoint names it may have, with the shape config.json implies.
// The whole table is checked before any tensor is read, so a bad checkpoint is refused, never half-loaded.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/types.h>

#include "core/safetensors.h"
#include "model/llava.h"

namespace mole {

// Reads DIR/config.json (ConfigError naming the file when missing or wrong).
LlavaConfig read_llava_config(const std::string& dir);

struct WeightEntry {
  std::string name;                  // our parameter name (older layout)
  std::vector<std::string> sources;  // checkpoint names it may have, in order of preference
  std::vector<int64_t> shape;        // implied by config.json
  torch::Tensor target;              // the parameter
};
std::vector<WeightEntry> llava_weight_table(Llava& model);

// Our name -> checkpoint name for every entry, after checking that every parameter is present with the shape
// config.json implies and that nothing unexpected is left over. Throws FormatError listing every problem.
// `also_unused`: checkpoint keys that hold nothing of ours and are not an error (a CLIPModel's text tower).
std::map<std::string, std::string> match_checkpoint(
    const std::vector<WeightEntry>& table, const TensorStore& store, const std::string& dir, bool tied_embeddings,
    const std::string& what = "checkpoint does not match its config.json",
    const std::function<bool(const std::string&)>& also_unused = nullptr);

// "older (...)" / "newer (...)", plus whether the vision tower keys are nested (vision_model.) or flat.
std::string checkpoint_layout(const TensorStore& store);

struct LoadedLlava {
  LlavaConfig config;
  Llava model = nullptr;
  std::string layout;  // checkpoint_layout()
};

// Builds the model from DIR/config.json and loads its weights in `dtype` onto `device`, in eval mode with
// gradients off for every parameter (callers that train re-enable what they train).
LoadedLlava load_llava(const std::string& dir, torch::ScalarType dtype = torch::kFloat32,
                       torch::Device device = torch::kCPU);

// Writes DIR/config.json and DIR/model.safetensors in the older llava-hf layout (language_model.model...,
// vision_tower.vision_model..., multi_modal_projector...), float32 or the model's dtype as it is: a folder that
// load_llava and transformers' LlavaForConditionalGeneration.from_pretrained both read. Adapters are not saved
// (save them apart); a tied head is written once, as the embedding. Each file is written atomically.
void save_llava(const std::string& dir, Llava& model);

// Initialisation for training from scratch, as transformers' _init_weights for LLaMA/CLIP-sized models and
// GPT-2: every Linear and embedding weight ~ N(0, std), biases 0, norms 1, and the projections that write into
// the residual stream (o_proj, down_proj, out_proj, fc2) scaled by 1/sqrt(2 * layers) so the residual's
// variance does not grow with depth. Deterministic under torch::manual_seed.
void init_llava_for_pretraining(Llava& model, double std = 0.02);

}  // namespace mole
