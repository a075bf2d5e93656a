// A LLaVA built from separate checkpoints (model/llava_assembly.h, model.vision_tower + model.language_model in a
// training config).
// [unit]: part folders written here from a tiny random Llava, in the names CLIPVisionModel, CLIPModel,
//   LlamaForCausalLM and the original LLaVA repository use, assemble into the model they came from (bit for bit);
//   a missing, unexpected or mis-shaped tensor and every inconsistent setting is an error naming the folder and the
//   tensor, or the config key.
// [reference]: the folders tests/reference/make_llava_parts.py writes with transformers (fixture parts_fixture):
//   `mole train` stage align from a CLIP + a LLaMA folder leaves a final/ that transformers'
//   LlavaForConditionalGeneration loads without a missing or unexpected weight, and whose logits equal mole's; an
//   original-layout folder + its CLIP folder computes what transformers computes on the converted llava-hf folder.
//
// Tolerance 1e-4 (max abs logits difference, float32), as tests/model/test_llava_reference.cpp: both sides compute
// in float32 with different summation orders (~1e-7 relative per op, ~1e-5 on logits of O(10)); a wrong mapping,
// feature layer or strategy moves logits by 1e-2 or more. Within mole, the same weights give the same bits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "data/shapes.h"
#include "model/llava_assembly.h"
#include "model/llava_loader.h"
#include "model/trained_model.h"
#include "pipelines/train_config.h"
#include "pipelines/train_setup.h"
#include "pipelines/trainer.h"
#include "tests/model/tiny_llava.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;
using mole::test::max_abs_diff;
namespace fs = std::filesystem;

namespace {

constexpr double kTol = 1e-4;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// ---- part folders written from a mole model, in the names transformers and LLaVA give them ----

Named params_of(torch::nn::Module& module, const std::string& strip = "", const std::string& add = "") {
  Named out;
  for (const auto& item : module.named_parameters()) {
    std::string name = item.key();
    if (!strip.empty() && name.rfind(strip, 0) == 0) name = name.substr(strip.size());
    out.emplace_back(add + name, item.value().detach().clone());
  }
  return out;
}

// CLIPVisionModel as transformers 5 saves it (flat: embeddings..., encoder...), or a CLIPModel (vision_model...,
// plus a text tower and the projections LLaVA does not use).
void write_clip(const std::string& dir, Llava& m, bool clip_model) {
  fs::create_directories(dir);
  Named tensors = params_of(*m->vision_tower, clip_model ? "" : "vision_model.");
  json config = m->config.vision.to_json();
  if (clip_model) {
    tensors.emplace_back("text_model.embeddings.token_embedding.weight", torch::randn({10, 8}));
    tensors.emplace_back("text_model.final_layer_norm.weight", torch::ones({8}));
    tensors.emplace_back("text_projection.weight", torch::randn({4, 8}));
    tensors.emplace_back("visual_projection.weight", torch::randn({4, m->config.vision.hidden_size}));
    tensors.emplace_back("logit_scale", torch::tensor(2.6592));
    config = {{"model_type", "clip"}, {"vision_config", config}, {"text_config", {{"hidden_size", 8}}}};
  }
  save_safetensors(dir + "/model.safetensors", tensors);
  write_json_file(dir + "/config.json", config);
}

// LlamaForCausalLM: model.embed_tokens, model.layers.N..., model.norm, lm_head.
void write_llama(const std::string& dir, Llava& m) {
  fs::create_directories(dir);
  save_safetensors(dir + "/model.safetensors", params_of(*m->language_model));
  write_json_file(dir + "/config.json", m->config.text.to_json());
}

// The original LLaVA layout: the LLaMA names, model.mm_projector.{0,2}.*, no vision tower, mm_* in config.json.
void write_original(const std::string& dir, Llava& m) {
  fs::create_directories(dir);
  Named tensors = params_of(*m->language_model);
  // nn.Sequential(Linear, GELU, Linear) for mlp2x_gelu: .0 and .2; a "linear" projector is the nn.Linear itself
  const bool linear = m->config.projector_type == "linear";
  for (auto& [name, t] : params_of(*m->multi_modal_projector))
    tensors.emplace_back("model.mm_projector" +
                             std::string(linear ? "" : name.rfind("linear_1.", 0) == 0 ? ".0" : ".2") +
                             name.substr(name.find('.')),
                         t);
  save_safetensors(dir + "/model.safetensors", tensors);
  json config = m->config.text.to_json();
  config["model_type"] = "llava";
  config["mm_vision_tower"] = "openai/clip-vit-large-patch14-336";
  config["mm_hidden_size"] = m->config.vision.hidden_size;
  config["mm_projector_type"] = m->config.projector_type;
  config["mm_vision_select_layer"] = m->config.vision_feature_layers[0];
  config["mm_vision_select_feature"] = m->config.vision_feature_select_strategy == "default" ? "patch" : "cls_patch";
  config["image_aspect_ratio"] = "pad";
  write_json_file(dir + "/config.json", config);
}

// A model of the tiny config with every weight drawn (std 0.2 so that each matters).
Llava random_llava(const LlavaConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  Llava m(config);
  init_llava_for_pretraining(m, 0.2);
  m->eval();
  return m;
}

// Rows of image tokens among text for the tiny config (4 features per image), and their images.
struct TinyBatch {
  torch::Tensor ids, mask, pixels;
};
TinyBatch tiny_batch(const LlavaConfig& c) {
  torch::manual_seed(99);
  const int64_t n = c.n_image_features();
  auto text = [&](int64_t k) { return torch::randint(1, c.image_token_index, {k}, torch::kInt64); };
  auto image = torch::full({n}, c.image_token_index, torch::kInt64);
  auto ids = torch::stack({torch::cat({text(3), image, text(5)}), torch::cat({text(6), image, text(2)})});
  return {ids, torch::ones_like(ids), torch::randn({2, 3, c.vision.image_size, c.vision.image_size})};
}

torch::Tensor logits_of(Llava& m, const TinyBatch& b) {
  torch::NoGradGuard no_grad;
  return m->forward(b.ids, b.mask, b.pixels);
}

LlavaParts parts_for(const std::string& clip, const std::string& llama, const LlavaConfig& c) {
  LlavaParts parts;
  parts.vision_tower = clip;
  parts.language_model = llama;
  parts.projector_config = {{"vision_feature_layer", c.vision_feature_layers[0]},
                            {"vision_feature_select_strategy", c.vision_feature_select_strategy}};
  parts.image_token_index = c.image_token_index;
  return parts;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- the reference side ----

std::string parts_dir() { return mole::test::ref_dir() + "/parts"; }

struct ShapesData {
  std::string dir;
};
const ShapesData& shapes_data() {
  static const ShapesData d = [] {
    ShapesData d;
    d.dir = mole::test::scratch_dir("assembly_shapes_" + std::to_string(::getpid()));
    ShapesOptions shapes;
    shapes.out_dir = d.dir;
    shapes.n_train = 24;
    shapes.n_eval = 2;
    shapes.n_text_train = 2;
    shapes.n_text_eval = 2;
    make_shapes_dataset(shapes);
    return d;
  }();
  return d;
}

json align_config(const std::string& out, const json& model) {
  const std::string data = shapes_data().dir;
  return {{"stage", "align"},
          {"out", out},
          {"model", model},
          {"data", {{"train", data + "/captions.json"}, {"images", data}, {"max_len", 128}, {"batch_size", 4},
                    {"workers", 1}}},
          {"optim", {{"steps", 3}, {"lr", 2e-3}, {"warmup_ratio", 0.0}}},
          {"run", {{"threads", 1}, {"progress", "off"}, {"log_every", 1}}}};
}

// Two right-padded rows with one image each (n_feat placeholders), ids of the fixture's tokenizer, its images.
void write_inputs(const std::string& path, int64_t n_feat, int64_t image_id, int64_t pad_id, int64_t image_size) {
  torch::manual_seed(7);
  auto row = [&](int64_t pre, int64_t post) {
    return torch::cat({torch::ones({1}, torch::kInt64), torch::randint(3, image_id, {pre}, torch::kInt64),
                       torch::full({n_feat}, image_id, torch::kInt64), torch::randint(3, image_id, {post}, torch::kInt64)});
  };
  auto a = row(4, 9), b = row(2, 5);
  const int64_t t = a.size(0);
  auto ids = torch::full({2, t}, pad_id, torch::kInt64), mask = torch::zeros({2, t}, torch::kInt64);
  ids[0] = a;
  mask[0].fill_(1);
  ids[1].narrow(0, 0, b.size(0)).copy_(b);
  mask[1].narrow(0, 0, b.size(0)).fill_(1);
  save_safetensors(path, {{"input_ids", ids}, {"attention_mask", mask},
                          {"pixel_values", torch::randn({2, 3, image_size, image_size})}});
}

// transformers' logits for INPUTS on a llava-hf FOLDER (make_llava_parts.py --check-llava refuses a folder with
// any missing, unexpected or mis-shaped weight, a tokenizer whose <image> is not config.json's, or a preprocessor
// of another size).
torch::Tensor transformers_logits(const std::string& folder, const std::string& inputs, const std::string& out) {
  std::string log;
  const int rc = mole::test::run_command(std::string(MOLE_PYTHON) + " " + mole::test::source_dir() +
                                             "/tests/reference/make_llava_parts.py --check-llava " + folder +
                                             " --inputs " + inputs + " --out " + out,
                                         &log);
  INFO(log);
  REQUIRE(rc == 0);
  return SafetensorsFile(out).tensor("logits");
}

torch::Tensor real_positions(const torch::Tensor& t, const torch::Tensor& mask) { return t.index({mask.to(torch::kBool)}); }

torch::Tensor mole_logits(Llava& m, const std::string& inputs) {
  SafetensorsFile in(inputs);
  torch::NoGradGuard no_grad;
  return m->forward(in.tensor("input_ids"), in.tensor("attention_mask"), in.tensor("pixel_values"));
}

}  // namespace

TEST_CASE("a LLaVA assembled from CLIP and LLaMA folders is the model they came from", "[unit][model]") {
  const LlavaConfig config = mole::test::tiny_llava_config();
  Llava source = random_llava(config, 1);
  const std::string dir = mole::test::scratch_dir("assembly_roundtrip");
  write_clip(dir + "/clip_vision", source, false);
  write_clip(dir + "/clip_model", source, true);
  write_llama(dir + "/llama", source);
  const TinyBatch batch = tiny_batch(config);

  for (const char* clip : {"clip_vision", "clip_model"}) {
    INFO(clip);
    torch::manual_seed(5);
    LoadedLlava a = load_llava_parts(parts_for(dir + "/" + clip, dir + "/llama", config));
    for (const auto& p : a.model->parameters()) CHECK_FALSE(p.requires_grad());
    // a new projector: nn.Linear's init (kaiming-uniform, |w| <= 1/sqrt(in)), the same under the same seed
    const auto& w = a.model->multi_modal_projector->linear_1->weight;
    CHECK(w.abs().max().item<double>() <= 1.0 / std::sqrt(double(w.size(1))) + 1e-7);
    CHECK(w.std().item<double>() > 0.1 / std::sqrt(double(w.size(1))));
    torch::manual_seed(5);
    LoadedLlava again = load_llava_parts(parts_for(dir + "/" + clip, dir + "/llama", config));
    CHECK(max_abs_diff(again.model->multi_modal_projector->linear_2->weight,
                       a.model->multi_modal_projector->linear_2->weight) == 0.0);
    // with the source's projector put on, every tensor and so every logit is the source's
    {
      torch::NoGradGuard no_grad;
      auto ours = a.model->multi_modal_projector->named_parameters();
      for (const auto& item : source->multi_modal_projector->named_parameters()) ours[item.key()].copy_(item.value());
    }
    CHECK(max_abs_diff(logits_of(a.model, batch), logits_of(source, batch)) == 0.0);
  }
}

TEST_CASE("an original LLaVA folder with its CLIP folder is the model it came from", "[unit][model]") {
  const LlavaConfig config = mole::test::tiny_llava_config();
  Llava source = random_llava(config, 2);
  const std::string dir = mole::test::scratch_dir("assembly_original");
  write_clip(dir + "/clip", source, false);
  write_original(dir + "/llava", source);
  CHECK(is_original_llava(dir + "/llava"));
  CHECK_FALSE(is_original_llava(dir + "/clip"));
  CHECK(original_llava_pads_images(dir + "/llava"));
  LlavaParts parts;
  parts.vision_tower = dir + "/clip";
  parts.original = dir + "/llava";
  parts.image_token_index = config.image_token_index;
  LoadedLlava loaded = load_llava_parts(parts);
  CHECK(loaded.config.projector_type == "mlp2x_gelu");
  CHECK(loaded.config.vision_feature_select_strategy == "default");
  CHECK(max_abs_diff(logits_of(loaded.model, tiny_batch(config)), logits_of(source, tiny_batch(config))) == 0.0);
  {  // LLaVA-1.0's single Linear: model.mm_projector.{weight,bias}
    LlavaConfig linear_config = config;
    linear_config.projector_type = "linear";
    Llava linear = random_llava(linear_config, 4);
    write_clip(dir + "/clip_linear", linear, false);
    write_original(dir + "/llava_linear", linear);
    LlavaParts linear_parts = parts;
    linear_parts.vision_tower = dir + "/clip_linear";
    linear_parts.original = dir + "/llava_linear";
    LoadedLlava loaded_linear = load_llava_parts(linear_parts);
    CHECK_FALSE(loaded_linear.model->multi_modal_projector->linear_2);
    CHECK(max_abs_diff(logits_of(loaded_linear.model, tiny_batch(config)), logits_of(linear, tiny_batch(config))) ==
          0.0);
  }

  // "cls_patch" keeps CLS ("full"); another projector width or select feature is refused by name
  json c = read_json_file(dir + "/llava/config.json");
  c["mm_vision_select_feature"] = "cls_patch";
  write_json_file(dir + "/llava/config.json", c);
  CHECK(parts_llava_config(parts).vision_feature_select_strategy == "full");
  c["mm_vision_select_feature"] = "cls";
  write_json_file(dir + "/llava/config.json", c);
  CHECK_THAT(error_of([&] { parts_llava_config(parts); }), Contains("mm_vision_select_feature 'cls'"));
  c["mm_vision_select_feature"] = "patch";
  c["mm_hidden_size"] = 1024;
  write_json_file(dir + "/llava/config.json", c);
  CHECK_THAT(error_of([&] { parts_llava_config(parts); }),
             Contains("mm_hidden_size 1024 is not the hidden_size 16") && Contains(dir + "/clip/config.json") &&
                 Contains("openai/clip-vit-large-patch14-336"));
  c["mm_hidden_size"] = 16;
  c["image_aspect_ratio"] = "anyres";
  write_json_file(dir + "/llava/config.json", c);
  CHECK_THAT(error_of([&] { original_llava_pads_images(dir + "/llava"); }), Contains("image_aspect_ratio 'anyres'"));
}

TEST_CASE("part folders that do not match their config are refused with the folder and tensor named", "[unit][model]") {
  const LlavaConfig config = mole::test::tiny_llava_config();
  Llava source = random_llava(config, 3);
  const std::string dir = mole::test::scratch_dir("assembly_errors");
  write_clip(dir + "/clip", source, false);
  write_llama(dir + "/llama", source);
  const LlavaParts parts = parts_for(dir + "/clip", dir + "/llama", config);
  REQUIRE_NOTHROW(load_llava_parts(parts));

  auto rewrite = [](const std::string& file, const std::function<void(Named&)>& edit) {
    SafetensorsFile f(file);
    Named tensors;
    for (const auto& name : f.names()) tensors.emplace_back(name, f.tensor(name));
    edit(tensors);
    save_safetensors(file, tensors);
  };
  const std::string lm_file = dir + "/llama/model.safetensors", clip_file = dir + "/clip/model.safetensors";
  SECTION("a missing tensor") {
    rewrite(lm_file, [](Named& t) {
      t.erase(std::remove_if(t.begin(), t.end(), [](auto& x) { return x.first == "model.layers.1.mlp.up_proj.weight"; }),
              t.end());
    });
    CHECK_THAT(error_of([&] { load_llava_parts(parts); }),
               Contains(dir + "/llama") && Contains("missing tensors") &&
                   Contains("language_model.model.layers.1.mlp.up_proj.weight (looked for "
                            "model.layers.1.mlp.up_proj.weight)"));
  }
  SECTION("an unexpected tensor") {
    rewrite(lm_file, [](Named& t) { t.emplace_back("model.layers.2.mlp.up_proj.weight", torch::zeros({2, 2})); });
    CHECK_THAT(error_of([&] { load_llava_parts(parts); }),
               Contains(dir + "/llama") && Contains("unexpected tensors") &&
                   Contains("model.layers.2.mlp.up_proj.weight"));
  }
  SECTION("a CLIPVisionModel folder with a CLIPModel's text tower") {
    rewrite(clip_file, [](Named& t) { t.emplace_back("text_model.final_layer_norm.weight", torch::ones({8})); });
    CHECK_THAT(error_of([&] { load_llava_parts(parts); }),
               Contains(dir + "/clip") && Contains("unexpected tensors") && Contains("text_model.final_layer_norm"));
  }
  SECTION("a mis-shaped tensor") {
    rewrite(clip_file, [](Named& t) {
      for (auto& x : t)
        if (x.first == "pre_layrnorm.weight") x.second = torch::ones({15});
    });
    CHECK_THAT(error_of([&] { load_llava_parts(parts); }),
               Contains(dir + "/clip") && Contains("pre_layrnorm.weight: checkpoint has [15], config.json implies [16]"));
  }
  SECTION("PyTorch pickles only") {
    fs::remove(lm_file);
    std::ofstream(dir + "/llama/pytorch_model.bin") << "pickle";
    CHECK_THAT(error_of([&] { load_llava_parts(parts); }),
               Contains(dir + "/llama: holds PyTorch pickles") && Contains("safetensors only"));
  }
  SECTION("configs") {
    LlavaParts bad = parts;
    bad.projector_config["mm_projector_typ"] = "linear";
    CHECK_THAT(error_of([&] { parts_llava_config(bad, "model"); }),
               Contains("model.projector_config: unknown key 'mm_projector_typ'") && Contains("mm_projector_type"));
    bad = parts;
    bad.projector_config["mm_projector_type"] = "mlp3x_gelu";
    CHECK_THAT(error_of([&] { parts_llava_config(bad, "model"); }),
               Contains("model.projector_config.mm_projector_type: 'mlp3x_gelu' is not supported"));
    bad = parts;
    bad.projector_config["vision_feature_layer"] = -9;
    CHECK_THAT(error_of([&] { parts_llava_config(bad, "model"); }), Contains("vision_feature_layer -9"));
    bad = parts;
    bad.image_token_index = 40;  // vocab_size 40
    CHECK_THAT(error_of([&] { parts_llava_config(bad, "model"); }),
               Contains("image token id 40 is outside the language model's vocabulary (vocab_size 40 in " + dir +
                        "/llama/config.json)"));
    bad = parts;
    bad.image_token_index = -1;
    CHECK_THAT(error_of([&] { parts_llava_config(bad, "model"); }), Contains("the tokenizer has no <image> token"));
    write_json_file(dir + "/llama/config.json", {{"model_type", "llava"}});
    CHECK_THAT(error_of([&] { parts_llava_config(parts, "model"); }),
               Contains(dir + "/llama/config.json: model_type 'llava' is not a language model") &&
                   Contains("model.base"));
    write_json_file(dir + "/clip/config.json", {{"model_type", "siglip_vision_model"}});
    CHECK_THAT(error_of([&] { parts_llava_config(parts, "model"); }),
               Contains(dir + "/clip/config.json: model_type 'siglip_vision_model' is not a CLIP vision tower"));
  }
}

TEST_CASE("train config: inconsistent ways to start a model are errors naming the keys", "[unit][train]") {
  auto config = [](const json& model) {
    return json{{"stage", "align"}, {"out", "runs/x"}, {"model", model}, {"data", {{"train", "d.json"}}}};
  };
  auto error = [](const json& j) { return error_of([&] { TrainConfig::from_json(j, "run.json"); }); };
  CHECK_THAT(error(config({{"base", "b"}, {"language_model", "l"}, {"vision_tower", "v"}})),
             Contains("run.json: model.language_model: and model.base are both given"));
  CHECK_THAT(error(config({{"language_model", "l"}})), Contains("run.json: model.vision_tower: is needed with "
                                                                "model.language_model"));
  CHECK_THAT(error(config({{"vision_tower", "v"}})), Contains("model.vision_tower: needs model.language_model"));
  CHECK_THAT(error(config({{"base", "b"}, {"projector_config", {{"mm_projector_type", "linear"}}}})),
             Contains("model.projector_config: only shapes the new projector of a model built from parts"));
  CHECK_THAT(error(config({{"language_model", "l"}, {"vision_tower", "v"}, {"projector_config", "linear"}})),
             Contains("model.projector_config: must be an object"));
  CHECK_THAT(error(config(json::object())), Contains("model.base: align needs model.base, or model.language_model"));
  json frozen = config({{"language_model", "l"}, {"vision_tower", "v"}, {"train_projector", false},
                        {"adapter", {{"kind", "lora"}}}});
  frozen["stage"] = "finetune";
  CHECK_THAT(error(frozen), Contains("model.train_projector: false keeps the new projector"));
  const TrainConfig parts = TrainConfig::from_json(config({{"language_model", "l"}, {"vision_tower", "v"}}), "run.json");
  CHECK(parts.model.projector_config.is_null());

  // what needs the folders: an original LLaVA base needs its CLIP folder, a llava-hf base refuses one
  const std::string dir = mole::test::scratch_dir("assembly_config");
  fs::create_directories(dir + "/original");
  write_json_file(dir + "/original/config.json",
                  {{"model_type", "llava"}, {"mm_vision_tower", "openai/clip-vit-large-patch14-336"},
                   {"mm_hidden_size", 1024}});
  CHECK_THAT(error_of([&] { spec_for(TrainConfig::from_json(config({{"base", dir + "/original"}}), "run.json")); }),
             Contains("model.vision_tower: model.base " + dir + "/original is an original LLaVA folder "
                      "(mm_vision_tower 'openai/clip-vit-large-patch14-336')") &&
                 Contains("give that CLIP folder as model.vision_tower"));
  const std::string hf = dir + "/llava_hf";  // only config.json is read before the error
  fs::create_directories(hf);
  write_json_file(hf + "/config.json", mole::test::tiny_llava_config().to_json());
  CHECK_THAT(error_of([&] {
               spec_for(TrainConfig::from_json(config({{"base", hf}, {"vision_tower", dir + "/original"}}), "run.json"));
             }),
             Contains("model.vision_tower: model.base " + hf + " is a llava-hf folder with a vision tower"));
}

TEST_CASE("stage align from a CLIP and a LLaMA folder: final/ loads in transformers with mole's logits",
          "[reference][model]") {
  const std::string parts = parts_dir();
  const json info = read_json_file(parts + "/parts_info.json");
  const std::string run = mole::test::scratch_dir("assembly_align") + "/run";
  const json model = {{"vision_tower", parts + "/clip_vision"},
                      {"language_model", parts + "/llama"},
                      {"projector_config", {{"mm_projector_type", "mlp2x_gelu"}, {"vision_feature_layer", -2},
                                            {"vision_feature_select_strategy", "default"}}}};
  const TrainConfig config = TrainConfig::from_json(align_config(run, model), "test align");
  const TrainResult result = run_training(config, false);
  REQUIRE(result.final_dir == run + "/final");
  const std::string final_dir = result.final_dir;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                        "added_tokens.json", "special_tokens_map.json", "preprocessor_config.json",
                        "projector.safetensors", "model.json", "trainable.safetensors"})
    CHECK(fs::exists(final_dir + "/" + f));

  // the frozen parts are in final/ bit for bit; the projector there is the trained one, not its initialisation
  SafetensorsFile saved(final_dir + "/model.safetensors");
  SafetensorsFile clip(parts + "/clip_vision/model.safetensors"), llama(parts + "/llama/model.safetensors");
  for (const auto& name : clip.names())
    CHECK(max_abs_diff(saved.tensor("vision_tower.vision_model." + name), clip.tensor(name)) == 0.0);
  for (const auto& name : llama.names()) CHECK(max_abs_diff(saved.tensor("language_model." + name), llama.tensor(name)) == 0.0);
  SafetensorsFile projector(final_dir + "/projector.safetensors");
  CHECK(projector.names().size() == 4);
  const ModelSpec spec = spec_for(config);
  torch::manual_seed(config.run.seed);  // as the trainer draws the projector
  TrainedModel start = build_model(spec);
  for (const auto& name : projector.names()) {
    INFO(name);
    CHECK(max_abs_diff(saved.tensor(name), projector.tensor(name)) == 0.0);
    const auto init = start.model->named_parameters()[name];
    CHECK(max_abs_diff(projector.tensor(name), init) > 1e-4);  // three AdamW steps at lr 2e-3 moved it
  }
  CHECK(start.model->config.image_token_index == info["image_token_index"].get<int64_t>());
  CHECK(start.model->config.text.vocab_size == info["vocab_size"].get<int64_t>());

  const std::string scratch = fs::path(run).parent_path().string();
  write_inputs(scratch + "/inputs.safetensors", 16, info["image_token_index"], info["pad_token_id"], 28);
  const auto theirs = transformers_logits(final_dir, scratch + "/inputs.safetensors", scratch + "/hf_logits.safetensors");
  const auto mask = SafetensorsFile(scratch + "/inputs.safetensors").tensor("attention_mask");
  LoadedLlava as_llava_hf = load_llava(final_dir);           // the llava-hf folder in final/
  TrainedModel as_run = load_trained(run);                    // the parts + trainable.safetensors, by model.json
  const auto ours = mole_logits(as_llava_hf.model, scratch + "/inputs.safetensors");
  const double diff = max_abs_diff(real_positions(ours, mask), real_positions(theirs, mask));
  WARN("align from parts: max abs logits difference mole vs transformers " << diff);
  CHECK(diff <= kTol);
  CHECK(max_abs_diff(mole_logits(as_run.model, scratch + "/inputs.safetensors"), ours) == 0.0);

  // a CLIPModel folder (vision_model.* among its text tower; a legacy vision_config_dict) gives the same tower
  ModelSpec from_clip_model = spec;
  from_clip_model.vision_tower = parts + "/clip_model";
  TrainedModel other = build_model(from_clip_model);
  auto a = other.model->vision_tower->named_parameters(), b = start.model->vision_tower->named_parameters();
  REQUIRE(a.size() == b.size());
  for (const auto& item : b) CHECK(max_abs_diff(a[item.key()], item.value()) == 0.0);
  CHECK(other.model->config.vision.hidden_act == start.model->config.vision.hidden_act);
}

TEST_CASE("an original LLaVA folder and its CLIP folder compute what transformers computes on the converted folder",
          "[reference][model]") {
  const std::string parts = parts_dir();
  const std::string hf = parts + "/llava_original_hf";
  ModelSpec spec;
  spec.stage = "base";
  spec.base = parts + "/llava_original";
  spec.vision_tower = parts + "/clip_vision";
  spec.tokenizer = spec.base;
  TrainedModel original = build_model(spec);
  CHECK(original.model->config.vision_feature_select_strategy == "full");  // mm_vision_select_feature cls_patch
  CHECK(original.model->config.vision_feature_layers == std::vector<int64_t>{-1});
  CHECK(original.image_config.pad_to_square);  // image_aspect_ratio pad
  CHECK(original.image_config.crop_height == 28);  // the rest from the CLIP folder's preprocessor_config.json

  SafetensorsFile inputs(hf + "/inputs.safetensors");
  const auto mask = inputs.tensor("attention_mask");
  const auto ours = mole_logits(original.model, hf + "/inputs.safetensors");
  const auto expected = SafetensorsFile(hf + "/expected.safetensors").tensor("logits");
  const double diff = max_abs_diff(real_positions(ours, mask), real_positions(expected, mask));
  WARN("original layout: max abs logits difference mole vs transformers " << diff);
  CHECK(diff <= kTol);
  // and mole reading the converted llava-hf folder: the same tensors, so the same bits
  LoadedLlava converted = load_llava(hf);
  CHECK(max_abs_diff(mole_logits(converted.model, hf + "/inputs.safetensors"), ours) == 0.0);

  // stage align from it: final/ is a llava-hf folder transformers reads, with mole's logits
  const std::string run = mole::test::scratch_dir("assembly_align_original") + "/run";
  json model = {{"base", spec.base}, {"vision_tower", spec.vision_tower}};
  json j = align_config(run, model);
  j["optim"]["steps"] = 2;
  const TrainResult result = run_training(TrainConfig::from_json(j, "test align original"), false);
  const std::string scratch = fs::path(run).parent_path().string();
  const auto theirs = transformers_logits(result.final_dir, hf + "/inputs.safetensors", scratch + "/hf_logits.safetensors");
  LoadedLlava aligned = load_llava(result.final_dir);
  const auto after = mole_logits(aligned.model, hf + "/inputs.safetensors");
  CHECK(max_abs_diff(real_positions(after, mask), real_positions(theirs, mask)) <= kTol);
  CHECK(max_abs_diff(real_positions(after, mask), real_positions(ours, mask)) > 1e-4);  // the projector trained
}

TEST_CASE("align from CLIP and a stock LLaMA folder: <image> and <pad> added, the vocabulary grown, transformers agrees",
          "[reference][model]") {
  const std::string parts = parts_dir();
  const json info = read_json_file(parts + "/parts_info.json");
  const int64_t n_pieces = info["n_pieces"];
  const std::string run = mole::test::scratch_dir("assembly_stock") + "/run";
  const json model = {{"vision_tower", parts + "/clip_vision"},
                      {"language_model", parts + "/llama_stock"},
                      {"projector_config", {{"vision_feature_layer", -2}}}};
  const TrainConfig config = TrainConfig::from_json(align_config(run, model), "stock align");
  const TrainResult result = run_training(config, false);
  const std::string final_dir = result.final_dir;
  // as the converter lays them out: <image> and <pad> right after the pieces, the rows padded to 64
  const LoadedLlava hf = load_llava(final_dir);
  REQUIRE(final_dir == run + "/final");
  CHECK(hf.config.image_token_index == n_pieces);
  CHECK(hf.config.text.pad_token_id == n_pieces + 1);
  CHECK(hf.config.text.vocab_size == (n_pieces + 2 + 63) / 64 * 64);
  const Tokenizer grown = Tokenizer::load(final_dir);
  CHECK(grown.image_token_id() == n_pieces);
  CHECK(grown.pad_id() == n_pieces + 1);
  // the stock rows bit for bit, the new ones their mean
  SafetensorsFile stock(parts + "/llama_stock/model.safetensors"), saved(final_dir + "/model.safetensors");
  for (const auto& [ours, theirs] : std::vector<std::pair<std::string, std::string>>{
           {"language_model.model.embed_tokens.weight", "model.embed_tokens.weight"},
           {"language_model.lm_head.weight", "lm_head.weight"}}) {
    const torch::Tensor w = saved.tensor(ours), original = stock.tensor(theirs);
    CHECK(max_abs_diff(w.narrow(0, 0, n_pieces), original) == 0.0);
    CHECK(max_abs_diff(w[n_pieces], original.mean(0)) < 1e-6);
  }
  // transformers runs the folder (its tokenizer's <image> is config.json's) with mole's logits
  const std::string scratch = fs::path(run).parent_path().string();
  write_inputs(scratch + "/inputs.safetensors", 16, n_pieces, n_pieces + 1, 28);
  const auto theirs = transformers_logits(final_dir, scratch + "/inputs.safetensors", scratch + "/hf_logits.safetensors");
  const auto mask = SafetensorsFile(scratch + "/inputs.safetensors").tensor("attention_mask");
  LoadedLlava reloaded = load_llava(final_dir);
  const auto ours = mole_logits(reloaded.model, scratch + "/inputs.safetensors");
  const double diff = max_abs_diff(real_positions(ours, mask), real_positions(theirs, mask));
  WARN("align from a stock LLaMA: max abs logits difference mole vs transformers " << diff);
  CHECK(diff <= kTol);
  // rebuilding the run (checkpoints, eval) grows the same way
  TrainedModel rebuilt = load_trained(run);
  CHECK(max_abs_diff(mole_logits(rebuilt.model, scratch + "/inputs.safetensors"), ours) == 0.0);
}
