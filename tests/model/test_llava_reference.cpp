// mole's LLaVA against transformers' LlavaForConditionalGeneration on the tiny random checkpoints that
// tests/reference/make_tiny_llava.py writes (fixture "tiny_llava"): logits, vision hidden states, vision
// features, projector output, per-layer language hidden states, and greedy generation.
//
// Tolerance 1e-4 (max abs error, float32): both sides compute in float32 but sum in different orders
// (oneDNN/MKL GEMM blocking, SDPA kernel vs transformers' kernels), ~1e-7 relative per op; with O(1)
// activations and logits of O(10) after the layers that grows to ~1e-5. A real mistake (rope, norm eps, mask,
// feature layer, GQA grouping) moves logits by 1e-2 or more, so 1e-4 separates the two with margin.
#include <catch2/catch.hpp>

#include <string>

#include <torch/torch.h>

#include "core/safetensors.h"
#include "model/llava_loader.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

constexpr double kTol = 1e-4;

// Rows of a (B, T, ...) tensor at the real (unpadded) positions: what a padded position holds is not defined.
torch::Tensor real_positions(const torch::Tensor& t, const torch::Tensor& attention_mask) {
  return t.index({attention_mask.to(torch::kBool)});
}

void check_forward(const std::string& model_dir, const std::string& data_dir, const std::string& side) {
  INFO("model " << model_dir << ", " << side << "-padded batch");
  auto loaded = load_llava(model_dir);
  SafetensorsFile inputs(data_dir + "/inputs_" + side + ".safetensors");
  SafetensorsFile expected(data_dir + "/expected_" + side + ".safetensors");
  auto mask = inputs.tensor("attention_mask");

  torch::NoGradGuard no_grad;
  LlavaTrace trace;
  // position_ids left out on purpose: mole derives them from the mask exactly as the reference passed them.
  auto logits = loaded.model->forward(inputs.tensor("input_ids"), mask, inputs.tensor("pixel_values"), {}, &trace);

  CHECK(max_abs_diff(real_positions(logits, mask), real_positions(expected.tensor("logits"), mask)) <= kTol);
  REQUIRE(trace.vision_hidden_states.size() == static_cast<size_t>(loaded.config.vision.n_layers + 1));
  for (size_t i = 0; i < trace.vision_hidden_states.size(); ++i) {
    INFO("vision_hidden_states." << i);
    CHECK(max_abs_diff(trace.vision_hidden_states[i], expected.tensor("vision_hidden_states." + std::to_string(i))) <=
          kTol);
  }
  CHECK(max_abs_diff(trace.vision_features, expected.tensor("vision_features")) <= kTol);
  CHECK(max_abs_diff(trace.image_features, expected.tensor("image_features")) <= kTol);
  REQUIRE(trace.hidden_states.size() == static_cast<size_t>(loaded.config.text.n_layers + 1));
  for (size_t i = 0; i < trace.hidden_states.size(); ++i) {
    INFO("hidden_states." << i);
    CHECK(max_abs_diff(real_positions(trace.hidden_states[i], mask),
                       real_positions(expected.tensor("hidden_states." + std::to_string(i)), mask)) <= kTol);
  }
}

GenerateOptions reference_generation(const LlavaConfig& config) {
  GenerateOptions options;
  options.max_new_tokens = 8;  // as make_tiny_llava.py
  options.eos_token_ids = config.text.eos_token_ids;
  options.pad_token_id = 0;
  return options;
}

}  // namespace

TEST_CASE("llava matches transformers: three key layouts, GQA, default strategy, both paddings",
          "[reference][llava]") {
  std::string ref = mole::test::ref_dir();
  for (const char* side : {"left", "right"}) {
    check_forward(ref + "/tiny_llava", ref + "/tiny_llava", side);
    // Same weights under the hub's two tensor-name layouts.
    check_forward(ref + "/tiny_llava_hub_older", ref + "/tiny_llava", side);
    check_forward(ref + "/tiny_llava_other_layout", ref + "/tiny_llava", side);
  }
  // Three different layouts really were read.
  auto saved = load_llava(ref + "/tiny_llava").layout, older = load_llava(ref + "/tiny_llava_hub_older").layout,
       newer = load_llava(ref + "/tiny_llava_other_layout").layout;
  CHECK(older == "older (language_model.model...)");
  CHECK(newer == "newer (model.language_model...)");
  CHECK(saved == "older (language_model.model...), flat vision tower (transformers 5)");
}

TEST_CASE("llava matches transformers: sharded, full strategy, last layer, tied lm_head, gelu, no GQA",
          "[reference][llava]") {
  std::string dir = mole::test::ref_dir() + "/tiny_llava_variant";
  for (const char* side : {"left", "right"}) check_forward(dir, dir, side);
}

TEST_CASE("greedy generation with the KV cache matches transformers' generate()", "[reference][llava][generate]") {
  for (const char* name : {"tiny_llava", "tiny_llava_variant"}) {
    std::string dir = mole::test::ref_dir() + "/" + name;
    INFO(dir);
    auto loaded = load_llava(dir);
    SafetensorsFile g(dir + "/generate.safetensors");
    auto options = reference_generation(loaded.config);
    auto batch = loaded.model->generate(g.tensor("input_ids"), g.tensor("attention_mask"), g.tensor("pixel_values"),
                                        options);
    auto single = loaded.model->generate(g.tensor("input_ids_single"), g.tensor("attention_mask_single"),
                                         g.tensor("pixel_values_single"), options);
    CHECK(torch::equal(batch, g.tensor("generated")));
    CHECK(torch::equal(single, g.tensor("generated_single")));
  }
}

TEST_CASE("cached decoding equals recomputing the whole sequence", "[reference][llava][generate]") {
  // The cache is an optimisation: logits of the last token must not depend on it.
  std::string dir = mole::test::ref_dir() + "/tiny_llava";
  auto loaded = load_llava(dir);
  SafetensorsFile g(dir + "/generate.safetensors");
  auto ids = g.tensor("input_ids"), mask = g.tensor("attention_mask"), pixels = g.tensor("pixel_values");
  auto generated = loaded.model->generate(ids, mask, pixels, reference_generation(loaded.config));
  auto full_ids = torch::cat({ids, generated}, 1);
  auto full_mask = torch::cat({mask, torch::ones_like(generated)}, 1);
  torch::NoGradGuard no_grad;
  auto logits = loaded.model->forward(full_ids, full_mask, pixels);  // (B, T+N, V), no cache
  int64_t t = ids.size(1);
  auto recomputed = logits.narrow(1, t - 1, generated.size(1)).argmax(-1);
  CHECK(torch::equal(recomputed, generated));
}

TEST_CASE("mole forward writes transformers' logits", "[reference][llava][cli]") {
  std::string dir = mole::test::ref_dir() + "/tiny_llava";
  std::string out = mole::test::scratch_dir("forward_cli") + "/out.safetensors";
  std::string log;
  int rc = mole::test::run_command(mole::test::mole_bin() + " forward --model " + dir + " --inputs " + dir +
                                       "/inputs_left.safetensors --out " + out + " --hidden-states",
                                   &log);
  INFO(log);
  REQUIRE(rc == 0);
  SafetensorsFile got(out), expected(dir + "/expected_left.safetensors");
  auto mask = SafetensorsFile(dir + "/inputs_left.safetensors").tensor("attention_mask");
  CHECK(max_abs_diff(real_positions(got.tensor("logits"), mask), real_positions(expected.tensor("logits"), mask)) <=
        kTol);
  CHECK(max_abs_diff(got.tensor("image_features"), expected.tensor("image_features")) <= kTol);
  CHECK(got.contains("hidden_states.3"));
  CHECK(got.contains("vision_hidden_states.3"));
}

TEST_CASE("bfloat16 and float16 weights give logits close to float32", "[reference][llava]") {
  // Half precision keeps ~3 significant digits; over a few layers the logits move by about 1%, so we ask for a
  // relative error under 5% and the same top token at most real positions.
  std::string dir = mole::test::ref_dir() + "/tiny_llava";
  SafetensorsFile inputs(dir + "/inputs_right.safetensors"), expected(dir + "/expected_right.safetensors");
  auto mask = inputs.tensor("attention_mask");
  auto want = real_positions(expected.tensor("logits"), mask);
  for (auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    INFO("dtype " << dtype);
    auto loaded = load_llava(dir, dtype);
    REQUIRE(loaded.model->language_model->model->embed_tokens->weight.scalar_type() == dtype);
    torch::NoGradGuard no_grad;
    auto logits = loaded.model->forward(inputs.tensor("input_ids"), mask, inputs.tensor("pixel_values", dtype));
    REQUIRE(logits.scalar_type() == dtype);
    auto got = real_positions(logits, mask).to(torch::kFloat32);
    double relative = ((got - want).norm() / want.norm()).item<double>();
    CHECK(relative < 0.05);
    double agree = (got.argmax(-1) == want.argmax(-1)).to(torch::kFloat32).mean().item<double>();
    CHECK(agree >= 0.8);
  }
}
