#include "model/llava.h"

#include <algorithm>

#include <torch/torch.h>

#include "core/json_config.h"

namespace mole {

namespace {

// A routing context over these tokens (flattened); mask undefined = all valid.
RoutingContext routing_context_for(const torch::Tensor& modality, const torch::Tensor& mask) {
  RoutingContext context;
  context.modality = modality.reshape({-1});
  context.valid =
      mask.defined() ? mask.reshape({-1}).to(torch::kBool) : torch::ones_like(context.modality, torch::kBool);
  return context;
}

}  // namespace

LlavaConfig LlavaConfig::from_json(const json& j, const std::string& where) {
  std::string model_type = field_or<std::string>(j, "model_type", "", where);
  if (model_type != "llava")
    throw ConfigError(where + ": model_type is '" + model_type + "', expected 'llava' (LlavaForConditionalGeneration)");
  if (!j.contains("vision_config") || !j["vision_config"].is_object())
    throw ConfigError(where + ": vision_config is missing");
  if (!j.contains("text_config") || !j["text_config"].is_object())
    throw ConfigError(where + ": text_config is missing");
  LlavaConfig c;
  std::string vision_type = field_or<std::string>(j["vision_config"], "model_type", "clip_vision_model", where);
  if (vision_type != "clip_vision_model")
    throw ConfigError(where + ": vision_config.model_type '" + vision_type + "' is not supported (clip_vision_model)");
  c.vision = VisionConfig::from_json(j["vision_config"], FieldPath{where, "vision_config"});
  c.text = TextConfig::from_json(j["text_config"], where + ": text_config");
  // transformers 5 names it image_token_id; older configs image_token_index.
  c.image_token_index = field_or<int64_t>(j, "image_token_id", field_or<int64_t>(j, "image_token_index", 32000, where), where);
  c.projector_hidden_act =
      parse_activation(field_or<std::string>(j, "projector_hidden_act", "gelu", where), where + ": projector_hidden_act");
  if (j.contains("vision_feature_layer") && j["vision_feature_layer"].is_array())
    c.vision_feature_layers = field<std::vector<int64_t>>(j, "vision_feature_layer", where);
  else
    c.vision_feature_layers = {field_or<int64_t>(j, "vision_feature_layer", -2, where)};
  for (int64_t layer : c.vision_feature_layers)
    if (layer < -(c.vision.n_layers + 1) || layer > c.vision.n_layers)
      throw ConfigError(where + ": vision_feature_layer " + std::to_string(layer) + " is outside the " +
                        std::to_string(c.vision.n_layers + 1) + " hidden states of the vision tower");
  c.vision_feature_select_strategy = field_or<std::string>(j, "vision_feature_select_strategy", "default", where);
  if (c.vision_feature_select_strategy != "default" && c.vision_feature_select_strategy != "full")
    throw ConfigError(where + ": vision_feature_select_strategy must be 'default' or 'full'");
  c.multimodal_projector_bias = field_or<bool>(j, "multimodal_projector_bias", true, where);
  c.projector_type = field_or<std::string>(j, "mm_projector_type", "mlp2x_gelu", where);
  c.torch_dtype = field_or<std::string>(j, "dtype", field_or<std::string>(j, "torch_dtype", "float32", where), where);
  // The top-level flag wins where both are given (LlavaConfig forwards it to the text model).
  c.text.tie_word_embeddings = field_or<bool>(j, "tie_word_embeddings", c.text.tie_word_embeddings, where);
  return c;
}

json LlavaConfig::to_json() const {
  return {{"model_type", "llava"},
          {"architectures", {"LlavaForConditionalGeneration"}},
          {"vision_config", vision.to_json()},
          {"text_config", text.to_json()},
          {"image_token_index", image_token_index},
          {"projector_hidden_act", activation_name(projector_hidden_act)},
          {"mm_projector_type", projector_type},
          {"vision_feature_layer", vision_feature_layers.size() == 1 ? json(vision_feature_layers[0])
                                                                     : json(vision_feature_layers)},
          {"vision_feature_select_strategy", vision_feature_select_strategy},
          {"multimodal_projector_bias", multimodal_projector_bias},
          {"tie_word_embeddings", text.tie_word_embeddings},
          {"pad_token_id", text.pad_token_id},
          {"dtype", torch_dtype}};
}

LlavaImpl::LlavaImpl(const LlavaConfig& config_) : config(config_) {
  vision_tower = register_module("vision_tower", ClipVisionModel(config.vision));
  int64_t in = config.vision.hidden_size * static_cast<int64_t>(config.vision_feature_layers.size());
  multi_modal_projector = register_module(
      "multi_modal_projector", Projector(ProjectorOptions(in, config.text.hidden_size)
                                             .type(config.projector_type)
                                             .act(config.projector_hidden_act)
                                             .bias(config.multimodal_projector_bias)));
  language_model = register_module("language_model", LlamaForCausalLM(config.text));
}

torch::Tensor LlavaImpl::image_features(const torch::Tensor& pixel_values, LlavaTrace* trace) {
  int64_t n_states = config.vision.n_layers + 1;
  std::vector<int64_t> indices;  // hidden_states[layer] with Python's negative indexing
  for (int64_t layer : config.vision_feature_layers) indices.push_back(layer < 0 ? n_states + layer : layer);
  int64_t n_run = trace ? config.vision.n_layers : *std::max_element(indices.begin(), indices.end());
  // Every token of the vision tower and the projector is an image token.
  RoutingContext context = routing_context_for(torch::full({pixel_values.size(0) * (config.vision.n_patches() + 1)},
                                                           kModalityImage, torch::TensorOptions().dtype(torch::kInt64)),
                                               {});
  RoutingScope scope(&context);
  auto states = vision_tower->hidden_states(pixel_values, n_run);

  std::vector<torch::Tensor> selected;
  for (int64_t index : indices) {
    auto s = states[index];  // (I, P+1, Dv)
    // "default": selected_image_feature[:, 1:] (drop CLS); "full": keep it
    selected.push_back(config.vision_feature_select_strategy == "default" ? s.narrow(1, 1, s.size(1) - 1) : s);
  }
  auto vision_features = torch::cat(selected, -1);                   // (I, N, Dv*layers)
  context.modality = torch::full({vision_features.size(0) * vision_features.size(1)}, kModalityImage,
                                 context.modality.options());
  context.valid = torch::ones_like(context.modality, torch::kBool);
  auto features = multi_modal_projector(vision_features);            // (I, N, Dt)
  if (trace) {
    trace->vision_hidden_states = states;
    trace->vision_features = vision_features;
    trace->image_features = features.reshape({-1, features.size(-1)});
  }
  return features;
}

torch::Tensor LlavaImpl::embed(const torch::Tensor& input_ids, const torch::Tensor& pixel_values, LlavaTrace* trace) {
  TORCH_CHECK(input_ids.dim() == 2, "llava: input_ids must be (batch, tokens), got ", input_ids.sizes());
  auto is_image = input_ids == config.image_token_index;  // (B, T)
  // The placeholder id may lie outside the vocabulary: embed something harmless there, it is replaced below.
  auto embeds = language_model->embed(input_ids.masked_fill(is_image, 0));  // (B, T, Dt)
  int64_t n_placeholders = is_image.sum().item<int64_t>();
  if (!pixel_values.defined() || pixel_values.numel() == 0) {
    TORCH_CHECK(n_placeholders == 0, "llava: input_ids hold ", n_placeholders,
                " image tokens but no pixel_values were given");
    return embeds;
  }
  auto features = image_features(pixel_values, trace);  // (I, N, Dt)
  TORCH_CHECK(n_placeholders == features.size(0) * features.size(1),
              "llava: image features and image tokens do not match: tokens ", n_placeholders, ", features ",
              features.size(0), " images x ", features.size(1));
  // inputs_embeds.masked_scatter(special_image_mask, image_features): fills placeholders in row-major order
  auto mask = is_image.unsqueeze(-1).expand_as(embeds);
  return embeds.masked_scatter(mask, features.to(embeds.scalar_type()));
}

torch::Tensor LlavaImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                 const torch::Tensor& pixel_values, const torch::Tensor& position_ids,
                                 LlavaTrace* trace) {
  return language_model->logits(hidden(input_ids, attention_mask, pixel_values, position_ids, nullptr, trace));
}

torch::Tensor LlavaImpl::hidden(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                const torch::Tensor& pixel_values, const torch::Tensor& position_ids,
                                const PackedRows* packed, LlavaTrace* trace) {
  auto mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  TORCH_CHECK(mask.sizes() == input_ids.sizes(), "llava: attention_mask ", mask.sizes(), " must match input_ids ",
              input_ids.sizes());
  TORCH_CHECK(!packed || (position_ids.defined() && !trace), "llava: packed rows need their position_ids (and no trace)");
  auto positions = position_ids.defined() ? position_ids : positions_from_mask(mask);
  auto embeds = embed(input_ids, pixel_values, trace);
  if (packed) {
    // Padding-free: the decoder runs on the real tokens alone, every sample of every row one after the other in
    // a single sequence (attention stays within each sample), and the states go back to their row positions.
    const int64_t b = input_ids.size(0), t = input_ids.size(1), d = embeds.size(2);
    auto keep = mask.reshape({-1}).nonzero().squeeze(1);  // (N) the real tokens, row-major
    auto pick = [&](const torch::Tensor& x) { return x.reshape({-1}).index_select(0, keep).unsqueeze(0); };
    PackedRows samples(1);
    for (const auto& row : *packed) samples[0].insert(samples[0].end(), row.begin(), row.end());
    auto ids = pick(input_ids), ones = torch::ones_like(ids);  // (1, N)
    RoutingContext context = routing_context_for(token_modality(ids), ones);
    context.language = true;
    RoutingScope scope(&context);
    auto states = language_model->model->forward(embeds.reshape({-1, d}).index_select(0, keep).unsqueeze(0),
                                                 pick(positions), ones, nullptr, nullptr, &samples);  // (1, N, D)
    return torch::zeros({b * t, d}, states.options()).index_copy(0, keep, states[0]).view({b, t, d});
  }
  RoutingContext context = routing_context_for(token_modality(input_ids), mask);
  context.language = true;
  RoutingScope scope(&context);
  return language_model->model->forward(embeds, positions, mask, nullptr, trace ? &trace->hidden_states : nullptr,
                                        packed);  // (B, T, D)
}

torch::Tensor LlavaImpl::generate(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                  const torch::Tensor& pixel_values, const GenerateOptions& options) {
  torch::NoGradGuard no_grad;
  auto embeds = embed(input_ids, pixel_values);
  auto mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  // Prompt tokens keep their modality; generated tokens are text, counted apart (phase kGenerate).
  RoutingContext context = routing_context_for(token_modality(input_ids), mask);
  context.language = true;
  RoutingScope scope(&context);
  GenerateOptions with_modality = options;  // each step's tokens labelled before its forward
  auto prompt_modality = context.modality;
  with_modality.before_forward = [&](const torch::Tensor& new_mask, bool prefill) {
    context.phase = prefill ? RoutePhase::kPrefill : RoutePhase::kGenerate;
    context.modality = prefill ? prompt_modality : torch::full({new_mask.numel()}, kModalityText, prompt_modality.options());
    context.valid = new_mask.reshape({-1}).to(torch::kBool);
    if (options.before_forward) options.before_forward(new_mask, prefill);
  };
  return generate_greedy(language_model, embeds, mask, with_modality);
}

torch::Tensor LlavaImpl::token_modality(const torch::Tensor& input_ids) const {
  return (input_ids == config.image_token_index).to(torch::kInt64) * kModalityImage;  // text 0, image 1
}

}  // namespace mole
