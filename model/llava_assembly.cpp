#include "model/llava_assembly.h"

#include <algorithm>
#include <filesystem>
#include <functional>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/linear.h"
#include "core/safetensors.h"

namespace mole {

namespace fs = std::filesystem;

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

const std::string kVision = "vision_tower.vision_model.";   // our CLIP parameters
const std::string kText = "language_model.model.";          // our decoder parameters
const std::string kHead = "language_model.lm_head.weight";
const std::string kProjector = "multi_modal_projector.";

// model_type of a CLIP folder's config.json: "clip" (CLIPModel) or "clip_vision_model" (CLIPVisionModel).
std::string clip_model_type(const json& j, const std::string& path) {
  const std::string type = field_or<std::string>(j, "model_type", "", path);
  if (type != "clip" && type != "clip_vision_model")
    throw ConfigError(path + ": model_type '" + type + "' is not a CLIP vision tower (clip: a CLIPModel folder, "
                      "clip_vision_model: a CLIPVisionModel folder)");
  return type;
}

// A part's weights. mole reads safetensors only: a folder of PyTorch pickles is named as such, not as "no file".
TensorStore open_part(const std::string& dir) {
  if (fs::is_directory(dir)) {
    bool safetensors = false, pickles = false;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string ext = e.path().extension().string();
      safetensors = safetensors || ext == ".safetensors" || e.path().filename() == "model.safetensors.index.json";
      pickles = pickles || ext == ".bin" || ext == ".pt" || ext == ".pth";
    }
    if (pickles && !safetensors)
      throw FormatError(dir + ": holds PyTorch pickles (*.bin) and no safetensors; mole reads safetensors only: "
                        "convert the weights first (transformers' save_pretrained writes safetensors)");
  }
  return TensorStore(dir);
}

// Puts each matched tensor of `store` into its parameter, in `dtype` on `device`, frozen.
void load_entries(std::vector<WeightEntry>& entries, const std::map<std::string, std::string>& matched,
                  const TensorStore& store, torch::ScalarType dtype, torch::Device device) {
  torch::NoGradGuard no_grad;
  for (auto& entry : entries) {
    entry.target.set_data(store.tensor(matched.at(entry.name), dtype).to(device));
    entry.target.set_requires_grad(false);
  }
}

// The llava config of an original LLaVA folder. LLaVA's LlavaConfig is a LlamaConfig (MistralConfig for
// llava_mistral) with the mm_* keys added by initialize_vision_modules; the vision tower's own config comes
// from the CLIP folder.
LlavaConfig original_config(const LlavaParts& parts, const VisionConfig& vision) {
  const std::string path = parts.original + "/config.json";
  const json j = read_json_file(path);
  const std::string type = field_or<std::string>(j, "model_type", "llava", path);
  const std::string text_type =
      type == "llava" || type == "llava_llama" ? "llama" : type == "llava_mistral" ? "mistral" : "";
  if (text_type.empty())
    throw ConfigError(path + ": model_type '" + type + "' is not an original LLaVA on LLaMA or Mistral (llava, "
                      "llava_llama, llava_mistral)");
  // mm_use_im_start_end wraps every image in <im_start> ... <im_end> tokens, which mole's templates never write.
  if (field_or<bool>(j, "mm_use_im_start_end", false, path))
    throw ConfigError(path + ": mm_use_im_start_end is true: image start/end tokens are not supported (LLaVA-1.5 "
                      "does not use them)");
  json text = j;
  text["model_type"] = text_type;
  const TextConfig t = TextConfig::from_json(text, path);
  // config.mm_hidden_size = vision_tower.hidden_size (initialize_vision_modules): a CLIP folder of another width
  // is not the tower this projector was trained on.
  const int64_t mm_hidden = field_or<int64_t>(j, "mm_hidden_size", vision.hidden_size, path);
  if (mm_hidden != vision.hidden_size)
    throw ConfigError(path + ": mm_hidden_size " + std::to_string(mm_hidden) + " is not the hidden_size " +
                      std::to_string(vision.hidden_size) + " of the vision tower in " + parts.vision_tower +
                      "/config.json: the CLIP folder is not the one this LLaVA was trained with (mm_vision_tower '" +
                      field_or<std::string>(j, "mm_vision_tower", "", path) + "')");
  // CLIPVisionTower.feature_select: "patch" drops CLS (transformers' "default"), "cls_patch" keeps it ("full").
  const std::string feature = field_or<std::string>(j, "mm_vision_select_feature", "patch", path);
  if (feature != "patch" && feature != "cls_patch")
    throw ConfigError(path + ": mm_vision_select_feature '" + feature + "' is not supported (patch, cls_patch)");
  json top = {{"model_type", "llava"},
              {"vision_config", vision.to_json()},
              {"text_config", t.to_json()},
              {"image_token_index", parts.image_token_index},
              {"projector_hidden_act", "gelu"},  // builder.py: nn.GELU(), the exact erf form
              // builder.py: getattr(config, 'mm_projector_type', 'linear')
              {"mm_projector_type", field_or<std::string>(j, "mm_projector_type", "linear", path)},
              // CLIPVisionTower has no default: args.mm_vision_select_layer
              {"vision_feature_layer", field<int64_t>(j, "mm_vision_select_layer", path)},
              {"vision_feature_select_strategy", feature == "patch" ? "default" : "full"},
              {"multimodal_projector_bias", true},  // nn.Linear's default
              {"tie_word_embeddings", t.tie_word_embeddings},
              {"torch_dtype", field_or<std::string>(j, "torch_dtype", "float32", path)}};
  return LlavaConfig::from_json(top, path);
}

}  // namespace

const std::vector<std::string>& projector_config_keys() {
  static const std::vector<std::string> keys = {"mm_projector_type",   "multimodal_projector_bias",
                                                "projector_hidden_act", "vision_feature_layer",
                                                "vision_feature_select_strategy", "image_token_index"};
  return keys;
}

VisionConfig read_clip_vision_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const json j = read_json_file(path);
  if (clip_model_type(j, path) == "clip_vision_model") return VisionConfig::from_json(j, FieldPath{path, ""});
  if (!j.contains("vision_config") || !j["vision_config"].is_object())
    throw ConfigError(path + ": a CLIPModel config (model_type clip) needs a vision_config object");
  json vision = j["vision_config"];
  // CLIPConfig.__init__: the values of a legacy vision_config_dict update vision_config.
  if (j.contains("vision_config_dict") && j["vision_config_dict"].is_object())
    for (const auto& [key, value] : j["vision_config_dict"].items()) vision[key] = value;
  return VisionConfig::from_json(vision, FieldPath{path, "vision_config"});
}

TextConfig read_language_model_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const json j = read_json_file(path);
  const std::string type = field_or<std::string>(j, "model_type", "", path);
  if (type != "llama" && type != "mistral")
    throw ConfigError(path + ": model_type '" + type + "' is not a language model mole reads (llama: "
                      "LlamaForCausalLM, mistral: MistralForCausalLM)" +
                      (starts_with(type, "llava") ? "; a LLaVA folder is given as model.base" : ""));
  return TextConfig::from_json(j, path);
}

bool is_original_llava(const std::string& dir) {
  const std::string path = dir + "/config.json";
  if (!fs::exists(path)) return false;
  const json j = read_json_file(path);
  return j.is_object() && !j.contains("text_config") && (j.contains("mm_hidden_size") || j.contains("mm_vision_tower"));
}

bool original_llava_pads_images(const std::string& dir) {
  const std::string path = dir + "/config.json";
  const std::string ratio = field_or<std::string>(read_json_file(path), "image_aspect_ratio", "square", path);
  if (ratio != "pad" && ratio != "square")
    throw ConfigError(path + ": image_aspect_ratio '" + ratio + "' is not supported (pad, square)");
  return ratio == "pad";
}

LlavaConfig parts_llava_config(const LlavaParts& parts, const std::string& where) {
  if (parts.vision_tower.empty()) throw ConfigError(where + ": no vision tower (a CLIP folder) is given");
  if (parts.language_model.empty() == parts.original.empty())
    throw ConfigError(where + ": give either a language model folder or an original LLaVA folder, not " +
                      (parts.original.empty() ? "neither" : "both"));
  const VisionConfig vision = read_clip_vision_config(parts.vision_tower);
  LlavaConfig c;
  std::string projector_at, vocab_file;
  if (!parts.original.empty()) {
    c = original_config(parts, vision);
    projector_at = parts.original + "/config.json: mm_projector_type";
    vocab_file = parts.original + "/config.json";
  } else {
    projector_at = where + ".projector_config";
    vocab_file = parts.language_model + "/config.json";
    if (!parts.projector_config.is_object())
      throw ConfigError(projector_at + ": must be an object (keys: mm_projector_type, vision_feature_layer, ...)");
    const auto& known = projector_config_keys();
    for (const auto& item : parts.projector_config.items())
      if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
        throw ConfigError(projector_at + ": unknown key '" + item.key() + "' (known: " + list + ")");
      }
    json top = parts.projector_config;
    top["model_type"] = "llava";
    top["vision_config"] = vision.to_json();
    top["text_config"] = read_language_model_config(parts.language_model).to_json();
    if (!top.contains("image_token_index") || top["image_token_index"].is_null())
      top["image_token_index"] = parts.image_token_index;
    c = LlavaConfig::from_json(top, projector_at);
    projector_at += ".mm_projector_type";
  }
  if (c.text.vocab_size < parts.min_vocab_size) c.text.vocab_size = (parts.min_vocab_size + 63) / 64 * 64;
  if (c.projector_type != "mlp2x_gelu" && c.projector_type != "linear")
    throw ConfigError(projector_at + ": '" + c.projector_type + "' is not supported (mlp2x_gelu, linear)");
  if (c.image_token_index < 0)
    throw ConfigError(where + ": no image token id: the tokenizer has no <image> token" +
                      std::string(parts.original.empty() ? " and projector_config names no image_token_index" : ""));
  // transformers' LlavaModel embeds the placeholder ids before it replaces them: they must be rows of the table.
  if (c.image_token_index >= c.text.vocab_size)
    throw ConfigError(where + ": the image token id " + std::to_string(c.image_token_index) +
                      " is outside the language model's vocabulary (vocab_size " + std::to_string(c.text.vocab_size) +
                      " in " + vocab_file + "); the vocabulary must hold <image> (transformers' "
                      "convert_llava_weights_to_hf.py adds it and resizes the embeddings)");
  if (c.text.pad_token_id < 0) c.text.pad_token_id = parts.pad_token_id;
  return c;
}

LoadedLlava load_llava_parts(const LlavaParts& parts, torch::ScalarType dtype, torch::Device device,
                             const std::string& where) {
  LoadedLlava loaded;
  loaded.config = parts_llava_config(parts, where);
  const bool original = !parts.original.empty();
  {
    NoInitGuard no_init;  // the parts overwrite every parameter; the projector is initialised below
    loaded.model = Llava(loaded.config);
  }
  std::vector<WeightEntry> vision, language, projector;
  for (WeightEntry& entry : llava_weight_table(loaded.model)) {
    if (starts_with(entry.name, kVision)) {
      // CLIPModel and transformers 4's CLIPVisionModel write vision_model.X; transformers 5's CLIPVisionModel X.
      const std::string rest = entry.name.substr(kVision.size());
      entry.sources = {"vision_model." + rest, rest};
      vision.push_back(std::move(entry));
    } else if (starts_with(entry.name, kText) || entry.name == kHead) {
      entry.sources = {entry.name == kHead ? "lm_head.weight" : "model." + entry.name.substr(kText.size())};
      language.push_back(std::move(entry));
    } else if (starts_with(entry.name, kProjector)) {
      // KEYS_TO_MODIFY_MAPPING: model.mm_projector.0 -> linear_1, .2 -> linear_2 (the nn.Sequential of
      // mlp2x_gelu); a "linear" projector is the nn.Linear itself, model.mm_projector.{weight,bias}.
      const std::string rest = entry.name.substr(kProjector.size());  // linear_1.weight
      const std::string param = rest.substr(rest.find('.') + 1);
      const std::string index = starts_with(rest, "linear_1.") ? "0." : "2.";
      entry.sources = {"model.mm_projector." + (loaded.config.projector_type == "linear" ? "" : index) + param};
      projector.push_back(std::move(entry));
    } else {
      throw std::logic_error("load_llava_parts: parameter " + entry.name + " belongs to no part");
    }
  }

  const std::string clip_path = parts.vision_tower + "/config.json";
  const bool clip_model = clip_model_type(read_json_file(clip_path), clip_path) == "clip";
  // A CLIPModel's text tower and both projections, and the projection of a CLIPVisionModelWithProjection, hold
  // nothing LLaVA uses (it takes hidden states of the vision encoder).
  auto clip_unused = [clip_model](const std::string& key) {
    return key == "visual_projection.weight" ||
           (clip_model && (starts_with(key, "text_model.") || key == "text_projection.weight" || key == "logit_scale"));
  };
  const TensorStore vision_store = open_part(parts.vision_tower);
  const auto vision_matched = match_checkpoint(vision, vision_store, parts.vision_tower, false,
                                               "does not hold the CLIP vision tower its config.json describes",
                                               clip_unused);

  const std::string lm_dir = original ? parts.original : parts.language_model;
  // a vocabulary grown for <image> and <pad> (min_vocab_size): the folder holds the first rows
  const int64_t file_vocab = original ? read_json_file(parts.original + "/config.json").value("vocab_size", int64_t(32000))
                                      : read_language_model_config(parts.language_model).vocab_size;
  std::vector<WeightEntry*> grown;
  for (WeightEntry& entry : language)
    if ((entry.name == kText + "embed_tokens.weight" || entry.name == kHead) && entry.shape[0] > file_vocab) {
      entry.shape[0] = file_vocab;
      grown.push_back(&entry);
    }
  if (original) language.insert(language.end(), projector.begin(), projector.end());
  const TensorStore lm_store = open_part(lm_dir);
  const auto lm_matched = match_checkpoint(
      language, lm_store, lm_dir, loaded.config.text.tie_word_embeddings,
      original ? "does not hold the language model and projector its config.json describes (original LLaVA layout)"
               : "does not hold the language model its config.json describes");

  load_entries(vision, vision_matched, vision_store, dtype, device);
  load_entries(language, lm_matched, lm_store, dtype, device);
  for (WeightEntry* entry : grown) {  // pointers into `language` before the projector entries were appended
    torch::NoGradGuard no_grad;
    const torch::Tensor rows = entry->target.detach();                      // (file_vocab, hidden)
    torch::Tensor all = rows.new_empty({loaded.config.text.vocab_size, rows.size(1)});
    all.narrow(0, 0, file_vocab).copy_(rows);
    all.narrow(0, file_vocab, all.size(0) - file_vocab).copy_(rows.mean(0, true).expand({all.size(0) - file_vocab, -1}));
    entry->target.set_data(all);
  }
  if (!original) {
    // LLaVA builds mm_projector after loading the language model, so it keeps nn.Linear's own initialisation.
    auto& p = loaded.model->multi_modal_projector;
    p->linear_1->reset_parameters();
    if (p->linear_2) p->linear_2->reset_parameters();
    p->to(device);
    for (auto& param : p->parameters()) param.set_requires_grad(false);
  }
  loaded.layout = std::string(clip_model ? "CLIPModel" : "CLIPVisionModel") + " + " +
                  (original ? "original LLaVA (language model + projector)"
                            : loaded.config.text.model_type + " language model + new projector");
  loaded.model->eval();
  return loaded;
}

}  // namespace mole
