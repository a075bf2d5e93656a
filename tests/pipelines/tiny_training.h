// Test helper: a tiny LLaVA pretrained once per test process on the shapes data with the tiny tokenizer, and a
// MoLE finetuning config on it, for the tests that train (tests/pipelines/).
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "data/shapes.h"
#include "pipelines/train_config.h"
#include "pipelines/trainer.h"
#include "tests/language/tiny_tokenizer.h"
#include "tests/test_util.h"

namespace mole::test {

using json = nlohmann::json;


// A LLaVA small enough to train in a fraction of a second per step: 32 px images in 4 patches, 2 text layers.
inline json tiny_init() {
  return {{"model_type", "llava"},
          {"vision_feature_layer", -1},
          {"vision_config", {{"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 1},
                             {"num_attention_heads", 2}, {"image_size", 32}, {"patch_size", 16}}},
          {"text_config", {{"model_type", "llama"}, {"hidden_size", 32}, {"intermediate_size", 64},
                           {"num_hidden_layers", 2}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
                           {"max_position_embeddings", 512}}}};
}

// Shapes data, the tiny tokenizer and a pretrained tiny base, made once per test process.
struct Setup {
  std::string dir, data, tokenizer, base;
};

inline const Setup& setup() {
  static const Setup s = [] {
    Setup s;
    // one folder per test process: ctest runs this file's cases as parallel processes, each making its own base
    s.dir = mole::test::scratch_dir("training_setup_" + std::to_string(::getpid()));
    s.data = s.dir + "/data";
    ShapesOptions shapes;
    shapes.out_dir = s.data;
    shapes.n_train = 40;
    shapes.n_eval = 4;
    shapes.n_text_train = 10;
    shapes.n_text_eval = 4;
    make_shapes_dataset(shapes);
    s.tokenizer = mole::test::tiny_tokenizer_dir();
    json pretrain = {{"stage", "pretrain"},
                     {"out", s.dir + "/pretrain"},
                     {"model", {{"tokenizer", s.tokenizer}, {"init", tiny_init()}}},
                     {"data", {{"train", s.data + "/captions.json"}, {"images", s.data}, {"max_len", 128},
                               {"batch_size", 4}, {"workers", 1}}},
                     {"optim", {{"steps", 3}, {"lr", 1e-3}}},
                     {"run", {{"threads", 1}, {"progress", "off"}}}};
    run_training(TrainConfig::from_json(pretrain, "test pretrain"), false);
    s.base = s.dir + "/pretrain/final";
    return s;
  }();
  return s;
}

// Finetuning with MoLE where randomness matters: noisy gating and LoRA dropout draw from the RNG every step.
inline json finetune_config(const std::string& out) {
  const Setup& s = setup();
  return {{"stage", "finetune"},
          {"out", out},
          {"model", {{"base", s.base},
                     {"adapter", {{"kind", "mole"}, {"granularity", "ffn"}, {"targets", {"gate_proj", "up_proj", "down_proj"}},
                                  {"rank", 4}, {"alpha", 8.0}, {"dropout", 0.1}, {"n_experts", 4}, {"top_k", 2},
                                  {"gating", "noisy_topk"}, {"losses", {{"switch_aux", 0.01}, {"z_loss", 0.001}}}}}}},
          {"data", {{"train", s.data + "/instruct.json"}, {"images", s.data}, {"max_len", 160}, {"batch_size", 4},
                    {"workers", 2}}},
          {"optim", {{"steps", 6}, {"lr", 2e-3}, {"weight_decay", 0.01}, {"grad_accum", 2}, {"warmup_ratio", 0.2}}},
          {"run", {{"threads", 1}, {"log_every", 1}, {"progress", "off"}, {"seed", 3}}}};
}

inline std::vector<json> logged_steps(const std::string& metrics) {
  std::vector<json> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line);
    if (j.contains("loss") && !j.contains("event")) out.push_back(j);
  }
  return out;
}


}  // namespace mole::test
