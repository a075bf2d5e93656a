// Padding-free packing and the supervised-only LM loss against the padded batch they replace: the same loss,
// balance losses, routing statistics and gradients (a LLaVA with FFN-level MoLE, image and text samples), and no
// token of a packed row attending across a sample boundary.
#include <catch2/catch.hpp>

#include <vector>

#include <torch/torch.h>

#include "language/conversation.h"
#include "model/adapters.h"
#include "model/llava.h"
#include "moe/balance.h"
#include "moe/routing_context.h"
#include "moe/routing_stats.h"
#include "tests/model/tiny_llava.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

struct Sample {
  std::vector<int64_t> ids, labels;
};

// Text tokens, with one image (4 placeholders) after the first token when `image`; about half the tokens after
// the image supervised.
Sample make_sample(int64_t length, bool image, int64_t seed) {
  torch::manual_seed(seed);
  Sample s;
  auto tokens = torch::randint(1, 39, {length}, torch::kInt64);
  auto coin = torch::rand({length});
  for (int64_t t = 0; t < length; ++t) {
    bool is_image = image && t >= 1 && t <= 4;
    s.ids.push_back(is_image ? 39 : tokens[t].item<int64_t>());
    s.labels.push_back(!is_image && t > 4 && coin[t].item<float>() < 0.5 ? s.ids.back() : kIgnoreIndex);
  }
  return s;
}

struct Layout {
  torch::Tensor ids, labels, mask, positions;  // (rows, width)
  PackedRows packed;
};

// One padded row per sample, or the samples in order in rows of up to `capacity` tokens (the loader's rule).
Layout lay_out(const std::vector<Sample>& samples, bool packing, int64_t capacity) {
  std::vector<std::vector<int64_t>> rows;  // sample indices per row
  std::vector<int64_t> fill;
  for (size_t i = 0; i < samples.size(); ++i) {
    int64_t len = int64_t(samples[i].ids.size());
    if (!packing || fill.empty() || fill.back() + len > capacity) rows.emplace_back(), fill.push_back(0);
    rows.back().push_back(int64_t(i));
    fill.back() += len;
  }
  int64_t width = *std::max_element(fill.begin(), fill.end()), n_rows = int64_t(rows.size());
  Layout l;
  l.ids = torch::zeros({n_rows, width}, torch::kInt64);
  l.labels = torch::full({n_rows, width}, kIgnoreIndex, torch::kInt64);
  l.mask = torch::zeros({n_rows, width}, torch::kInt64);
  for (int64_t r = 0; r < n_rows; ++r) {
    int64_t at = 0;
    if (packing) l.packed.emplace_back();
    for (int64_t i : rows[size_t(r)]) {
      const Sample& s = samples[size_t(i)];
      for (size_t t = 0; t < s.ids.size(); ++t, ++at) {
        l.ids[r][at] = s.ids[t];
        l.labels[r][at] = t == 0 ? kIgnoreIndex : s.labels[t];
        l.mask[r][at] = 1;
      }
      if (packing) l.packed.back().push_back(int64_t(s.ids.size()));
    }
  }
  if (packing) l.positions = positions_for_packing(l.packed, width);
  return l;
}

struct Result {
  torch::Tensor loss, aux;
  std::vector<torch::Tensor> grads;
  nlohmann::json routing;
};

Result run(Llava& model, const Layout& l, const torch::Tensor& pixels) {
  model->zero_grad();
  RoutingStats stats;
  LayerLosses losses;
  Result r;
  {
    RoutingSinkScope sinks(RoutingSinks{&stats, &losses});
    auto hidden = model->hidden(l.ids, l.mask, pixels, l.positions, l.packed.empty() ? nullptr : &l.packed);
    r.loss = model->language_model->next_token_loss(hidden, l.labels);
    r.aux = sum_over_layers(losses).total;
  }
  (r.loss + r.aux).backward();
  for (auto& p : model->parameters())
    if (p.requires_grad()) r.grads.push_back(p.grad().clone());
  r.routing = stats.to_json();
  return r;
}

// A tiny LLaVA with FFN-level MoLE (4 experts, top-2, a switch balance loss) on both language layers and LoRA on
// attention; the projector trainable. Every adapter B random, so that all of it matters.
Llava tiny_mole_llava() {
  torch::manual_seed(7);
  Llava model(mole::test::tiny_llava_config());
  AdapterConfig config;
  config.mole.n_experts(4).rank(2).alpha(4.0).dropout(0.0);  // deterministic: the layouts are compared
  config.mole.routing().top_k(2);
  config.mole.losses().switch_aux = 0.1;
  attach_adapters(model, config);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters())
    if (p.value().requires_grad()) p.value().normal_(0.0, 0.3);
  for (auto& p : model->multi_modal_projector->parameters()) p.set_requires_grad(true);
  return model;
}

}  // namespace

TEST_CASE("packed rows give the loss, balance losses, routing statistics and gradients of the padded batch",
          "[unit][model][packing]") {
  Llava model = tiny_mole_llava();
  std::vector<Sample> samples = {make_sample(13, true, 1), make_sample(7, false, 2), make_sample(19, true, 3),
                                 make_sample(5, false, 4), make_sample(11, true, 5)};
  auto pixels = torch::randn({3, 3, 8, 8});
  Layout padded = lay_out(samples, false, 0), packed = lay_out(samples, true, 24);
  REQUIRE(packed.packed.size() < samples.size());  // some rows do hold two samples
  Result want = run(model, padded, pixels), got = run(model, packed, pixels);
  CHECK(got.loss.item<double>() == Approx(want.loss.item<double>()).epsilon(1e-6));
  CHECK(got.aux.item<double>() == Approx(want.aux.item<double>()).epsilon(1e-6));
  REQUIRE(got.grads.size() == want.grads.size());
  for (size_t i = 0; i < want.grads.size(); ++i) CHECK(max_abs_diff(got.grads[i], want.grads[i]) < 1e-5);
  // the same tokens of each modality routed to the same experts
  for (auto& [layer, phases] : want.routing["layers"].items())
    for (const char* modality : {"text", "image"}) {
      auto w = phases["prefill"][modality], g = got.routing["layers"][layer]["prefill"][modality];
      CHECK(g["tokens"] == w["tokens"]);
      CHECK(g["top1"] == w["top1"]);
    }
}

TEST_CASE("no token of a packed row attends across a sample boundary", "[unit][model][packing]") {
  Llava model = tiny_mole_llava();
  torch::NoGradGuard no_grad;
  std::vector<Sample> samples = {make_sample(9, false, 11), make_sample(12, false, 12), make_sample(6, false, 13)};
  Layout packed = lay_out(samples, true, 64);
  REQUIRE(packed.packed.size() == 1);
  auto before = model->hidden(packed.ids, packed.mask, {}, packed.positions, &packed.packed);
  // change every token of the first and the last sample: the middle one's states must not move
  auto changed = packed.ids.clone();
  changed.narrow(1, 0, 9).fill_(3);
  changed.narrow(1, 21, 6).fill_(5);
  auto after = model->hidden(changed, packed.mask, {}, packed.positions, &packed.packed);
  // (not bit-equal: the experts' GEMMs run over other segment sizes when the neighbours route elsewhere)
  CHECK(max_abs_diff(after.narrow(1, 9, 12), before.narrow(1, 9, 12)) < 1e-6);
  CHECK(max_abs_diff(after.narrow(1, 0, 9), before.narrow(1, 0, 9)) > 1e-2);  // the change did reach sample 0
  // and each sample alone gives its states in the packed row
  for (auto [start, i] : {std::pair<int64_t, size_t>{0, 0}, {9, 1}, {21, 2}}) {
    Layout alone = lay_out({samples[i]}, false, 0);
    auto own = model->hidden(alone.ids, alone.mask, {});
    CHECK(max_abs_diff(own[0], before[0].narrow(0, start, own.size(1))) < 1e-5);
  }
}

TEST_CASE("the LM loss at supervised positions equals cross-entropy over all logits, with its gradients",
          "[unit][model][packing]") {
  Llava model = tiny_mole_llava();
  std::vector<Sample> samples = {make_sample(10, true, 21), make_sample(8, false, 22)};
  auto pixels = torch::randn({1, 3, 8, 8});
  Layout l = lay_out(samples, false, 0);
  auto grads = [&](const torch::Tensor& loss) {
    std::vector<torch::Tensor> g;
    for (auto& p : model->parameters())
      if (p.requires_grad()) g.push_back(torch::autograd::grad({loss}, {p}, {}, true)[0]);
    return g;
  };
  auto hidden = model->hidden(l.ids, l.mask, pixels);
  auto selected = model->language_model->next_token_loss(hidden, l.labels);
  auto logits = model->language_model->logits(hidden);  // (B, T, V): what the loss used to take
  auto full = torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, logits.size(2)}), l.labels.slice(1, 1).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(kIgnoreIndex));
  CHECK(selected.item<double>() == Approx(full.item<double>()).epsilon(1e-6));
  auto a = grads(selected), b = grads(full);
  for (size_t i = 0; i < a.size(); ++i) CHECK(max_abs_diff(a[i], b[i]) < 1e-6);
}
