// A bad checkpoint is refused with an error that names what is wrong, before any weight is loaded; `mole info`
// reports it and exits non-zero without crashing. The checkpoints are written here by mole itself (config.json
// from LlavaConfig::to_json, weights with save_safetensors), which also tests that round trip.
#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/llava_loader.h"
#include "tests/model/tiny_llava.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Matchers::Contains;

namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

Named weights_of(Llava& model) {
  Named named;
  for (const auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value().detach());
  return named;
}

// Writes config.json and model.safetensors for `model`, with `edit` applied to the tensor list first.
std::string write_checkpoint(const std::string& tag, const LlavaConfig& config, Named weights) {
  std::string dir = mole::test::scratch_dir(tag);
  write_json_file(dir + "/config.json", config.to_json());
  save_safetensors(dir + "/model.safetensors", weights);
  return dir;
}

std::string load_error(const std::string& dir) {
  try {
    load_llava(dir);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a checkpoint mole writes loads back with identical weights and logits", "[unit][checkpoint]") {
  torch::manual_seed(0);
  auto config = mole::test::tiny_llava_config();
  Llava model(config);
  std::string dir = write_checkpoint("ckpt_roundtrip", config, weights_of(model));
  auto loaded = load_llava(dir);
  for (const auto& p : model->named_parameters()) {
    INFO(p.key());
    CHECK(torch::equal(p.value(), loaded.model->named_parameters()[p.key()]));
  }
  torch::NoGradGuard no_grad;
  model->eval();
  auto ids = torch::tensor({{1, 39, 39, 39, 39, 5, 6}}, torch::kInt64);
  auto pixels = torch::randn({1, 3, 8, 8});
  CHECK(torch::equal(model->forward(ids, {}, pixels), loaded.model->forward(ids, {}, pixels)));
}

TEST_CASE("bad checkpoints are refused with errors naming the problem", "[unit][checkpoint]") {
  torch::manual_seed(0);
  auto config = mole::test::tiny_llava_config();
  Llava model(config);
  Named good = weights_of(model);
  const std::string victim = "language_model.model.layers.1.mlp.up_proj.weight";

  SECTION("missing tensor") {
    Named w;
    for (auto& [name, t] : good)
      if (name != victim) w.emplace_back(name, t);
    auto err = load_error(write_checkpoint("ckpt_missing", config, w));
    CHECK_THAT(err, Contains("missing tensors (1)") && Contains(victim));
  }
  SECTION("unexpected tensor") {
    Named w = good;
    w.emplace_back("language_model.model.layers.7.mlp.up_proj.weight", torch::zeros({2, 2}));
    auto err = load_error(write_checkpoint("ckpt_extra", config, w));
    CHECK_THAT(err, Contains("unexpected tensors (1)") && Contains("layers.7.mlp.up_proj.weight"));
  }
  SECTION("shape disagreeing with config.json") {
    auto bigger = config;
    bigger.text.intermediate_size = 48;  // config says 48, weights were made with 32
    auto err = load_error(write_checkpoint("ckpt_shape", bigger, good));
    CHECK_THAT(err, Contains("shapes that disagree with config.json") && Contains(victim) &&
                        Contains("checkpoint has [32, 16], config.json implies [48, 16]"));
  }
  SECTION("missing config.json") {
    std::string dir = write_checkpoint("ckpt_noconfig", config, good);
    std::filesystem::remove(dir + "/config.json");
    CHECK_THAT(load_error(dir), Contains(dir + "/config.json") && Contains("cannot open"));
  }
  SECTION("config.json that is not a llava config") {
    std::string dir = write_checkpoint("ckpt_wrongtype", config, good);
    std::ofstream(dir + "/config.json") << R"({"model_type": "bert", "hidden_size": 16})";
    CHECK_THAT(load_error(dir), Contains("model_type is 'bert'"));
  }
  SECTION("no weights at all") {
    std::string dir = write_checkpoint("ckpt_noweights", config, good);
    std::filesystem::remove(dir + "/model.safetensors");
    CHECK_THAT(load_error(dir), Contains(dir));
  }
  SECTION("truncated weights file") {
    std::string dir = write_checkpoint("ckpt_truncated", config, good);
    std::string file = dir + "/model.safetensors";
    std::filesystem::resize_file(file, std::filesystem::file_size(file) - 100);
    auto err = load_error(dir);
    CHECK_THAT(err, Contains(file) && Contains("past the end"));
  }
  SECTION("header length past the end of the file") {
    std::string dir = write_checkpoint("ckpt_headerlen", config, good);
    std::string file = dir + "/model.safetensors";
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    uint64_t huge = 1u << 26;
    f.write(reinterpret_cast<const char*>(&huge), 8);
    f.close();
    CHECK_THAT(load_error(dir), Contains(file) && Contains("header"));
  }
  SECTION("mole info reports it and exits 1, not a crash") {
    Named w;
    for (auto& [name, t] : good)
      if (name != victim) w.emplace_back(name, t);
    std::string dir = write_checkpoint("ckpt_info", config, w);
    std::string out;
    int rc = mole::test::run_command(mole::test::mole_bin() + " info " + dir, &out);
    CHECK(rc == 1);
    CHECK_THAT(out, Contains("missing tensors (1)") && Contains(victim));
  }
}

TEST_CASE("mole info describes a checkpoint", "[unit][checkpoint][cli]") {
  torch::manual_seed(0);
  auto config = mole::test::tiny_llava_config();
  Llava model(config);
  std::string dir = write_checkpoint("ckpt_info_ok", config, weights_of(model));
  std::string out;
  REQUIRE(mole::test::run_command(mole::test::mole_bin() + " info --json " + dir, &out) == 0);
  auto info = json::parse(out);
  int64_t vision = 0, projector = 0, language = 0;
  for (const auto& p : model->vision_tower->parameters()) vision += p.numel();
  for (const auto& p : model->multi_modal_projector->parameters()) projector += p.numel();
  for (const auto& p : model->language_model->parameters()) language += p.numel();
  CHECK(info["parameters"]["vision"] == vision);
  CHECK(info["parameters"]["projector"] == projector);
  CHECK(info["parameters"]["language"] == language);
  CHECK(info["checkpoint"]["dtypes"]["F32"] == static_cast<int64_t>(model->parameters().size()));
  CHECK(info["runtime"]["threads"].get<int>() >= 1);
  CHECK(info["config"]["text_config"]["num_key_value_heads"] == 2);
}

TEST_CASE("a llava config.json's vision_config is read by its field list", "[unit][checkpoint]") {
  json j = mole::test::tiny_llava_config().to_json();
  j["vision_config"]["attention_dropout"] = 0.0;  // a CLIPVisionConfig key mole has no use for: ignored
  LlavaConfig c = LlavaConfig::from_json(j, "config.json");
  CHECK(c.vision.to_json() == mole::test::tiny_llava_config().vision.to_json());
  j["vision_config"]["hidden_size"] = "wide";
  CHECK_THROWS_WITH(LlavaConfig::from_json(j, "config.json"),
                    Contains("config.json: vision_config.hidden_size: expected an integer"));
  j["vision_config"]["hidden_size"] = 17;  // not a multiple of the 2 heads
  CHECK_THROWS_WITH(LlavaConfig::from_json(j, "config.json"),
                    Contains("vision_config.hidden_size: must be a positive multiple of num_attention_heads"));
  j["vision_config"]["hidden_size"] = 16;
  j["vision_config"]["hidden_act"] = "gelu_new";  // an alias: read as the tanh GELU, written by its first name
  CHECK(LlavaConfig::from_json(j, "config.json").vision.to_json()["hidden_act"] == "gelu_pytorch_tanh");
}
