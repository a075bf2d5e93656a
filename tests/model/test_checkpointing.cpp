// Activation checkpointing: checkpointed() against the plain computation (outputs, every gradient, the generator
// left as the plain run leaves it, parameters trained when the input is frozen), and a LLaVA with MoLE on every
// layer, noisy gating, dropout and balance losses: the loss, every gradient and the routing statistics the same
// with none, decoder and all, padded and packed.
#include <catch2/catch.hpp>

#include <set>
#include <string>
#include <vector>

#include <torch/csrc/autograd/function.h>
#include <torch/torch.h>

#include "core/activation_checkpoint.h"
#include "language/conversation.h"
#include "language/packing.h"
#include "model/adapters.h"
#include "model/checkpointing.h"
#include "model/llava.h"
#include "moe/balance.h"
#include "moe/routing_context.h"
#include "tests/model/tiny_llava.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

// A block with randomness (dropout) and a second output (a loss it reports).
std::vector<torch::Tensor> block(const torch::Tensor& x, const torch::Tensor& w) {
  torch::Tensor y = torch::dropout(torch::tanh(torch::matmul(x, w)), 0.3, /*train=*/true);
  return {y, y.pow(2).mean()};
}

}  // namespace

TEST_CASE("checkpointed(): outputs, gradients and the generator as the plain block's", "[unit][model][checkpoint]") {
  for (bool x_trains : {true, false}) {
    DYNAMIC_SECTION("input needs a gradient: " << x_trains) {
      torch::manual_seed(1);
      torch::Tensor x0 = torch::randn({5, 4}, torch::kFloat64), w0 = torch::randn({4, 3}, torch::kFloat64);
      auto run = [&](bool checkpoint, std::vector<torch::Tensor>* grads, torch::Tensor* after) {
        torch::Tensor x = x0.clone().set_requires_grad(x_trains), w = w0.clone().set_requires_grad(true);
        torch::manual_seed(7);
        std::vector<torch::Tensor> out =
            checkpoint ? checkpointed([&w](const torch::Tensor& in, bool) { return block(in, w); }, x, {w})
                       : block(x, w);
        torch::Tensor loss = out[0].sum() * 0.5 + out[1] * 3.0;
        loss.backward();
        *grads = {w.grad()};
        if (x_trains) grads->push_back(x.grad());
        *after = torch::rand({4});  // the generator's next draws: recomputing must not move it
        return loss.item<double>();
      };
      std::vector<torch::Tensor> g_plain, g_ckpt;
      torch::Tensor after_plain, after_ckpt;
      const double plain = run(false, &g_plain, &after_plain), ckpt = run(true, &g_ckpt, &after_ckpt);
      CHECK(plain == ckpt);
      REQUIRE(g_plain.size() == g_ckpt.size());
      for (size_t i = 0; i < g_plain.size(); ++i) CHECK(max_abs_diff(g_plain[i], g_ckpt[i]) < 1e-12);
      CHECK(torch::equal(after_plain, after_ckpt));
    }
  }
  SECTION("without grad mode, or with nothing to train, it is the block") {
    torch::Tensor x = torch::randn({2, 4}), w = torch::randn({4, 3});
    int calls = 0;
    CheckpointFn fn = [&](const torch::Tensor& in, bool) {
      ++calls;
      return std::vector<torch::Tensor>{torch::matmul(in, w)};
    };
    CHECK_FALSE(checkpointed(fn, x, {w})[0].requires_grad());
    CHECK(calls == 1);
  }
}

namespace {

struct Inputs {
  torch::Tensor ids, mask, labels, pixels, positions;
  PackedRows rows;
};

// Two rows, one image each; packed: the same two samples, each its own row.
Inputs make_inputs() {
  torch::manual_seed(5);
  Inputs in;
  in.ids = torch::randint(1, 39, {2, 12}, torch::kInt64);
  in.ids.narrow(1, 1, 4).fill_(39);
  in.mask = torch::ones_like(in.ids);
  in.labels = in.ids.clone();
  in.labels.narrow(1, 0, 6).fill_(kIgnoreIndex);
  in.pixels = torch::randn({2, 3, 8, 8});
  in.rows = {{12}, {12}};
  in.positions = positions_for_packing(in.rows, 12);
  return in;
}

// MoLE (FFN level, noisy top-2 of 4) on every language layer and LoRA on the vision tower, dropout, two balance
// losses; B drawn so every adapter matters.
Llava routed_llava() {
  torch::manual_seed(11);
  Llava model(mole::test::tiny_llava_config());
  AdapterConfig config;
  config.kind = AdapterKind::kMole;
  config.parts = {ModelPart::kLanguage, ModelPart::kVision};
  BalanceLossOptions losses;
  losses.switch_aux = 0.01, losses.z_loss = 0.001;
  RoutingOptions routing;
  routing.top_k(2).gating(Gating::kNoisyTopk);
  config.mole.n_experts(4).rank(2).alpha(4.0).dropout(0.1).routing(routing).losses(losses);
  attach_adapters(model, config);
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters())
    if (p.requires_grad()) p.normal_(0.0, 0.3);
  model->train();
  return model;
}

// Nodes of the loss's autograd graph with this name (each counted once).
int count_nodes(const torch::Tensor& loss, const std::string& name) {
  std::vector<torch::autograd::Node*> todo{loss.grad_fn().get()};
  std::set<torch::autograd::Node*> seen;
  int n = 0;
  while (!todo.empty()) {
    torch::autograd::Node* node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node).second) continue;
    if (node->name() == name) ++n;
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function.get());
  }
  return n;
}

struct Step {
  int checkpoints = 0;  // checkpoint nodes in the graph
  double loss = 0;
  std::vector<torch::Tensor> grads;
  RoutingTable routing;
  size_t n_losses = 0;
};

Step step(Llava& model, const Inputs& in, bool packed) {
  RoutingStats stats;
  LayerLosses losses;
  RoutingSinkScope sinks(RoutingSinks{&stats, &losses});
  torch::manual_seed(3);  // noisy gating and dropout draw the same numbers in every mode
  auto hidden = packed ? model->hidden(in.ids, in.mask, in.pixels, in.positions, &in.rows)
                       : model->hidden(in.ids, in.mask, in.pixels);
  torch::Tensor loss = model->language_model->next_token_loss(hidden, in.labels) + sum_over_layers(losses).total;
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters())
    if (p.requires_grad()) trainable.push_back(p);
  Step s;
  s.checkpoints = count_nodes(loss, "mole::CheckpointBackward");
  s.loss = loss.item<double>();
  s.n_losses = losses.size();
  s.grads = torch::autograd::grad({loss}, trainable, {}, false, false, true);
  s.routing = stats.table();
  return s;
}

}  // namespace

TEST_CASE("a MoLE LLaVA checkpointed per layer: the loss, every gradient and the routing statistics unchanged",
          "[unit][model][checkpoint]") {
  Llava model = routed_llava();
  const Inputs in = make_inputs();
  for (bool packed : {false, true}) {
    DYNAMIC_SECTION("packed " << packed) {
      set_activation_checkpointing(model, ActivationCheckpointing::kNone);
      const Step plain = step(model, in, packed);
      REQUIRE(plain.n_losses == 2);  // one BalanceLosses per MoLE layer
      CHECK(plain.checkpoints == 0);
      for (ActivationCheckpointing mode : {ActivationCheckpointing::kDecoder, ActivationCheckpointing::kAll}) {
        INFO(enum_name(mode));
        set_activation_checkpointing(model, mode);
        const Step got = step(model, in, packed);
        // every decoder layer is a checkpoint, and with `all` the vision layers that run (they have LoRA; the
        // features come from the penultimate layer, so 1 of 2) as well
        CHECK(got.checkpoints == (mode == ActivationCheckpointing::kAll ? 3 : 2));
        CHECK(std::abs(got.loss - plain.loss) < 1e-6);
        CHECK(got.n_losses == plain.n_losses);
        REQUIRE(got.grads.size() == plain.grads.size());
        for (size_t i = 0; i < got.grads.size(); ++i) {
          INFO("gradient " << i);
          REQUIRE(got.grads[i].defined() == plain.grads[i].defined());
          if (got.grads[i].defined()) CHECK(max_abs_diff(got.grads[i], plain.grads[i]) < 1e-6);
        }
        // recorded once, by the first run: the same tokens and shares
        CHECK(got.routing.to_json() == plain.routing.to_json());
      }
      set_activation_checkpointing(model, ActivationCheckpointing::kNone);
    }
  }
}
