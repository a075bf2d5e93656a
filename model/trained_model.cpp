#include "model/trained_model.h"

#include <filesystem>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/adapters.h"
#include "model/llava_loader.h"

namespace mole {

namespace fs = std::filesystem;

json ModelSpec::to_json() const {
  return {{"stage", stage},
          {"base", base},
          {"init", init},
          {"vision_tower", vision_tower},
          {"language_model", language_model},
          {"projector_config", projector_config},
          {"projector", projector},
          {"adapter", adapter},
          {"tokenizer", tokenizer},
          {"template", conversation_template},
          {"image_processor", image_processor}};
}

ModelSpec ModelSpec::from_json(const json& j, const std::string& where) {
  ModelSpec s;
  s.stage = field_or<std::string>(j, "stage", "", where);
  s.base = field_or<std::string>(j, "base", "", where);
  s.init = j.value("init", json());
  s.vision_tower = field_or<std::string>(j, "vision_tower", "", where);
  s.language_model = field_or<std::string>(j, "language_model", "", where);
  s.projector_config = j.value("projector_config", json());
  s.projector = field_or<std::string>(j, "projector", "", where);
  s.adapter = j.value("adapter", json());
  s.tokenizer = field_or<std::string>(j, "tokenizer", "", where);
  s.conversation_template = field_or<std::string>(j, "template", s.conversation_template, where);
  s.image_processor = j.value("image_processor", json());
  if (s.base.empty() && !s.init.is_object() && s.language_model.empty())
    throw ConfigError(where + ": needs \"base\", \"init\" or \"language_model\"");
  if (!s.language_model.empty() && s.vision_tower.empty())
    throw ConfigError(where + ": \"language_model\" needs \"vision_tower\"");
  if (s.tokenizer.empty()) throw ConfigError(where + ": needs \"tokenizer\"");
  return s;
}

ImageProcessorConfig image_config_for(const LlavaConfig& config, const json& given, const std::string& dir) {
  if (given.is_object()) return ImageProcessorConfig::from_json(given, "image_processor");
  if (!dir.empty() && fs::exists(dir + "/preprocessor_config.json"))
    return ImageProcessorConfig::from_file(dir + "/preprocessor_config.json");
  ImageProcessorConfig c;
  c.shortest_edge = config.vision.image_size;
  c.crop_height = c.crop_width = config.vision.image_size;
  return c;
}

std::string resolve_model_dir(const std::string& path) {
  if (fs::exists(path + "/final/model.json")) return path + "/final";
  return path;
}

LlavaParts parts_of(const ModelSpec& spec, const Tokenizer& tokenizer) {
  LlavaParts parts;
  parts.vision_tower = spec.vision_tower;
  parts.language_model = spec.language_model;
  parts.original = spec.language_model.empty() ? spec.base : "";
  if (spec.projector_config.is_object()) parts.projector_config = spec.projector_config;
  parts.image_token_index = tokenizer.image_token_id();
  parts.pad_token_id = tokenizer.pad_id();
  parts.min_vocab_size = tokenizer.vocab_size();
  return parts;
}

TrainedModel build_model(const ModelSpec& spec, torch::Device device, torch::ScalarType base_dtype) {
  TrainedModel out;
  out.spec = spec;
  out.tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(spec.tokenizer));
  LlavaConfig config;
  // Parts: CLIP + LLaMA folders, or an original LLaVA folder with the CLIP folder its vision tower is not in.
  const bool from_parts = !spec.vision_tower.empty();
  if (!from_parts && !spec.base.empty() && is_original_llava(spec.base))
    throw ConfigError(spec.base + ": an original LLaVA folder (mm_vision_tower '" +
                      read_json_file(spec.base + "/config.json").value("mm_vision_tower", std::string()) +
                      "'): its vision tower is not inside; give that CLIP folder as model.vision_tower");
  if (from_parts) {
    // A stock Vicuna / LLaMA tokenizer has no <image>: it gets <image> (and <pad> if it has none) after its
    // pieces, and the language model the rows for them (LlavaParts::min_vocab_size), as transformers'
    // convert_llava_weights_to_hf.py does; the same every time the spec is built, so checkpoints agree.
    if (out.tokenizer->image_token_id() < 0)
      out.tokenizer = std::make_shared<const Tokenizer>(out.tokenizer->with_added_tokens({"<image>", "<pad>"}));
    out.model = load_llava_parts(parts_of(spec, *out.tokenizer), base_dtype, device, "model").model;
    config = out.model->config;
    // The data marks images with the tokenizer's <image>, the model looks for image_token_index: one id.
    if (config.image_token_index != out.tokenizer->image_token_id())
      throw ConfigError("model.projector_config: image_token_index " + std::to_string(config.image_token_index) +
                        " is not the <image> id of the tokenizer " + spec.tokenizer + " (" +
                        std::to_string(out.tokenizer->image_token_id()) + ")");
    if (out.tokenizer->vocab_size() > config.text.vocab_size)
      throw ConfigError(spec.tokenizer + ": the tokenizer has " + std::to_string(out.tokenizer->vocab_size()) +
                        " tokens, more than the vocab_size " + std::to_string(config.text.vocab_size) + " of " +
                        (spec.language_model.empty() ? spec.base : spec.language_model) + "/config.json");
  } else if (!spec.base.empty()) {
    out.model = load_llava(spec.base, base_dtype, device).model;
    config = out.model->config;
  } else {
    config = LlavaConfig::from_json(spec.init, "model init config");
    out.model = Llava(config);
    init_llava_for_pretraining(out.model);
    out.model->to(device);
    for (auto& p : out.model->parameters()) p.set_requires_grad(false);
  }
  if ((from_parts || !spec.base.empty()) && base_dtype != torch::kFloat32) {
    torch::NoGradGuard no_grad;
    for (auto& p : out.model->multi_modal_projector->parameters()) p.set_data(p.to(torch::kFloat32));
  }
  if (!spec.projector.empty()) {
    TensorStore store(spec.projector);
    torch::NoGradGuard no_grad;
    for (auto& item : out.model->multi_modal_projector->named_parameters()) {
      torch::Tensor& p = item.value();
      const std::string key = "multi_modal_projector." + item.key();
      if (!store.contains(key)) throw FormatError(spec.projector + ": no tensor " + key);
      torch::Tensor t = store.tensor(key, p.scalar_type());
      if (t.sizes() != p.sizes())
        throw FormatError(spec.projector + ": " + key + " has shape " + c10::str(t.sizes()) + ", the model " +
                          c10::str(p.sizes()));
      p.copy_(t);
    }
  }
  if (spec.adapter.is_object()) {
    AdapterConfig adapter = AdapterConfig::from_json(spec.adapter, "model.json adapter");
    attach_adapters(out.model, adapter);
    out.model->to(device);
  }
  if (from_parts && spec.language_model.empty() && !spec.image_processor.is_object()) {
    // An original LLaVA keeps image_aspect_ratio in its config.json; the rest is the CLIP processor's.
    out.image_config = image_config_for(config, json(), spec.vision_tower);
    out.image_config.pad_to_square = original_llava_pads_images(spec.base);
  } else {
    out.image_config = image_config_for(config, spec.image_processor, from_parts ? spec.vision_tower : spec.base);
  }
  out.conversation_template = parse_template(spec.conversation_template);
  return out;
}

TrainedModel load_trained(const std::string& path, torch::Device device) {
  const std::string dir = resolve_model_dir(path);
  if (!fs::exists(dir + "/model.json")) {
    if (!fs::exists(dir + "/config.json"))
      throw ConfigError(path + ": not a mole run, checkpoint or llava-hf folder (no model.json or config.json)");
    ModelSpec spec;
    spec.stage = "base";
    spec.base = dir;
    spec.tokenizer = dir;
    TrainedModel out = build_model(spec, device);
    out.source = dir;
    out.model->eval();
    return out;
  }
  ModelSpec spec = ModelSpec::from_json(read_json_file(dir + "/model.json"), dir + "/model.json");
  TrainedModel out = build_model(spec, device);
  const std::string weights = dir + "/trainable.safetensors";
  TensorStore store(weights);
  torch::NoGradGuard no_grad;
  int64_t loaded = 0;
  for (auto& item : out.model->named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    if (!store.contains(name)) continue;
    torch::Tensor t = store.tensor(name, p.scalar_type());
    if (t.sizes() != p.sizes())
      throw FormatError(weights + ": " + name + " has shape " + c10::str(t.sizes()) + ", the model " +
                        c10::str(p.sizes()));
    p.copy_(t.to(p.device()));
    ++loaded;
  }
  if (loaded != int64_t(store.names().size()))
    throw FormatError(weights + ": " + std::to_string(store.names().size() - size_t(loaded)) +
                      " tensors match no parameter of the model model.json describes");
  out.source = dir;
  out.model->eval();
  return out;
}

}  // namespace mole
