// Adapter checkpoints: PEFT interop against peft itself (reference), MoLE round trip, and refusal of an
// adapter whose base does not match.
#include <catch2/catch.hpp>

#include <string>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/adapters.h"
#include "model/llava_loader.h"
#include "moe/routing_context.h"
#include "moe/routing_stats.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

constexpr double kTol = 1e-4;  // float32, as the base model's parity tests (see test_llava_reference.cpp)

torch::Tensor real_positions(const torch::Tensor& t, const torch::Tensor& mask) {
  return t.index({mask.to(torch::kBool)});
}

torch::Tensor logits_of(Llava& model, const SafetensorsFile& inputs) {
  torch::NoGradGuard no_grad;
  model->eval();
  return model->forward(inputs.tensor("input_ids"), inputs.tensor("attention_mask"), inputs.tensor("pixel_values"));
}

void randomize_adapters(Llava& model, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : adapter_parameters(model)) t.normal_(0.0, 0.1);
}

}  // namespace

TEST_CASE("PEFT-saved LoRA adapters load in mole and give PEFT's logits", "[reference][peft]") {
  std::string ref = mole::test::ref_dir();
  SafetensorsFile inputs(ref + "/tiny_llava/inputs_left.safetensors");
  auto mask = inputs.tensor("attention_mask");
  for (const char* name : {"lora", "rslora"}) {
    INFO("adapter " << name);
    std::string dir = ref + "/peft/" + name;
    auto loaded = load_llava(ref + "/tiny_llava");
    auto config = load_adapter(dir, loaded.model);  // recognises peft_type LORA
    CHECK(config.kind == AdapterKind::kLora);
    SafetensorsFile expected(dir + "/expected_left.safetensors");
    auto logits = logits_of(loaded.model, inputs);
    CHECK(max_abs_diff(real_positions(logits, mask), real_positions(expected.tensor("logits"), mask)) <= kTol);
    // and the adapter matters: far from the base logits
    CHECK(max_abs_diff(real_positions(logits, mask), real_positions(expected.tensor("base_logits"), mask)) > 0.5);
  }
}

TEST_CASE("a LoRA adapter saved by mole in PEFT's layout loads in PEFT with the same logits", "[reference][peft]") {
  std::string ref = mole::test::ref_dir();
  auto loaded = load_llava(ref + "/tiny_llava");
  AdapterConfig config;
  config.kind = AdapterKind::kLora;
  config.mole.rank(3).alpha(6.0).rslora(true);
  config.targets = {"q_proj", "v_proj", "o_proj", "up_proj", "down_proj"};
  config.layers = {0, 2};
  config.base_model = ref + "/tiny_llava";
  auto attached = attach_adapters(loaded.model, config);
  CHECK(attached.size() == 2 * 5);  // language layers 0 and 2 only: the vision tower's q/v are left alone
  randomize_adapters(loaded.model, 5);
  std::string out = mole::test::scratch_dir("peft_export");
  save_peft_adapter(out + "/adapter", loaded.model, config);

  SafetensorsFile inputs(ref + "/tiny_llava/inputs_left.safetensors");
  auto ours = logits_of(loaded.model, inputs);
  std::string log;
  int rc = mole::test::run_command(std::string(MOLE_PYTHON) + " " + mole::test::source_dir() +
                                       "/tests/reference/make_peft_adapter.py --model " + ref +
                                       "/tiny_llava --check-adapter " + out + "/adapter --inputs " + ref +
                                       "/tiny_llava/inputs_left.safetensors --out " + out + "/peft_logits.safetensors"
                                       " --strict-names",
                                   &log);
  INFO(log);
  REQUIRE(rc == 0);
  auto mask = inputs.tensor("attention_mask");
  SafetensorsFile theirs(out + "/peft_logits.safetensors");
  CHECK(max_abs_diff(real_positions(ours, mask), real_positions(theirs.tensor("logits"), mask)) <= kTol);

  // and back into mole from the PEFT files
  auto again = load_llava(ref + "/tiny_llava");
  load_peft_adapter(out + "/adapter", again.model);
  CHECK(max_abs_diff(logits_of(again.model, inputs), ours) == 0.0);
}

TEST_CASE("a MoLE adapter round-trips: identical outputs and routing", "[reference][adapter]") {
  std::string ref = mole::test::ref_dir();
  SafetensorsFile inputs(ref + "/tiny_llava/inputs_left.safetensors");
  for (Granularity granularity : {Granularity::kFfn, Granularity::kLinear}) {
    INFO("granularity " << enum_name(granularity));
    auto loaded = load_llava(ref + "/tiny_llava");
    AdapterConfig config;
    config.kind = AdapterKind::kMole;
    config.granularity = granularity;
    config.mole.n_experts(4).rank(2).shared_expert(true);
    config.mole.routing().top_k(2).mode(RoutingMode::kModalityGrouped).expert_modality({0, 0, 1, -1});
    config.mole_layers = {1, 2};  // layer 0 gets plain LoRA
    config.parts = {ModelPart::kLanguage, ModelPart::kProjector};
    config.targets = {"q_proj", "v_proj", "gate_proj", "up_proj", "down_proj", "linear_1"};
    auto attached = attach_adapters(loaded.model, config);
    randomize_adapters(loaded.model, 9);
    std::string dir = mole::test::scratch_dir("mole_roundtrip_" + enum_name(granularity));
    save_adapter(dir, loaded.model, config);

    RoutingStats stats_a, stats_b;
    torch::Tensor a, b;
    {
      RoutingSinkScope record(RoutingSinks{&stats_a});
      a = logits_of(loaded.model, inputs);
    }

    auto fresh = load_llava(ref + "/tiny_llava");
    auto read = load_adapter(dir, fresh.model);
    CHECK(read.to_json() == AdapterConfig::from_json(read_json_file(dir + "/adapter_config.json"), "x").to_json());
    {
      RoutingSinkScope record(RoutingSinks{&stats_b});
      b = logits_of(fresh.model, inputs);
    }
    CHECK(torch::equal(a, b));
    CHECK(stats_a.to_json() == stats_b.to_json());
    CHECK(stats_a.layers().size() >= 2);
  }
}

TEST_CASE("an adapter on a base with other shapes is refused clearly", "[reference][adapter]") {
  std::string ref = mole::test::ref_dir();
  auto loaded = load_llava(ref + "/tiny_llava");
  AdapterConfig config;
  config.kind = AdapterKind::kLora;
  config.mole.rank(2);
  attach_adapters(loaded.model, config);
  std::string dir = mole::test::scratch_dir("adapter_mismatch");
  save_adapter(dir, loaded.model, config);
  // The variant has another config: the hash check names both.
  auto other = load_llava(ref + "/tiny_llava_variant");
  CHECK_THROWS_WITH(load_adapter(dir, other.model), Catch::Contains("adapter was made for a base whose config hash"));
  // Without the hash (a hand-edited config), the shape check names the tensors.
  auto j = read_json_file(dir + "/adapter_config.json");
  j["base_config_hash"] = "";
  write_json_file(dir + "/adapter_config.json", j);
  auto other2 = load_llava(ref + "/tiny_llava_variant");
  CHECK_THROWS_WITH(load_adapter(dir, other2.model), Catch::Contains("does not match") && Catch::Contains("lora_A"));
  // A PEFT adapter for another base: shapes differ.
  auto other3 = load_llava(ref + "/tiny_llava_variant");
  CHECK_THROWS_WITH(load_adapter(ref + "/peft/lora", other3.model), Catch::Contains("PEFT adapter does not fit"));
}

TEST_CASE("generation records routing of prompt and generated tokens apart", "[reference][adapter][stats]") {
  std::string ref = mole::test::ref_dir();
  auto loaded = load_llava(ref + "/tiny_llava");
  AdapterConfig config;
  config.kind = AdapterKind::kMole;
  config.mole.n_experts(4).rank(2).routing().top_k(1);
  attach_adapters(loaded.model, config);
  randomize_adapters(loaded.model, 3);
  RoutingStats stats;
  RoutingSinkScope record(RoutingSinks{&stats});
  SafetensorsFile g(ref + "/tiny_llava/generate.safetensors");
  auto ids = g.tensor("input_ids"), mask = g.tensor("attention_mask");
  GenerateOptions options;
  options.max_new_tokens = 4;  // no eos: both rows run all 4 steps
  auto out = loaded.model->generate(ids, mask, g.tensor("pixel_values"), options);
  REQUIRE(out.size(1) == 4);
  auto table = stats.to_json()["layers"]["language_model.model.layers.0.mlp"];
  int64_t image_tokens = (ids == loaded.config.image_token_index).sum().item<int64_t>();
  int64_t prompt_text = mask.sum().item<int64_t>() - image_tokens;  // padding is not counted
  CHECK(table["prefill"]["image"]["tokens"] == image_tokens);
  CHECK(table["prefill"]["text"]["tokens"] == prompt_text);
  // the first new token comes from the prefill; 3 more forwards of 2 rows each
  CHECK(table["generate"]["text"]["tokens"] == 3 * 2);
  CHECK_FALSE(table["generate"].contains("image"));
}
