// The fused LoRA Linear (one autograd function: frozen GEMM, dropout, low-rank pair, in-place adds) against the
// op-by-op form W x + b + s B A drop(x): outputs and the gradients of x, A, B (and of W, b when they train), with
// dropout on (the same mask from the same seed) and off, in training and eval mode; and linear-level MoLE through
// the same function (gated experts side by side) against its op-by-op dense form, router gradients included.
#include <catch2/catch.hpp>

#include <vector>

#include <torch/torch.h>

#include "moe/lora.h"
#include "moe/mole_linear.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

struct Outcome {
  torch::Tensor y;
  std::vector<torch::Tensor> grads;
};

Outcome run(Linear& base, Lora& lora, const torch::Tensor& x_in, bool fused, uint64_t seed) {
  auto x = x_in.detach().clone().requires_grad_(true);
  torch::manual_seed(seed);  // the dropout mask
  auto y = fused ? base->forward(x) : base->base_forward(x) + lora->delta(x);
  std::vector<torch::Tensor> inputs = {x, lora->lora_A->weight, lora->lora_B->weight};
  for (auto* p : {&base->weight, &base->bias})  // not parameters(): that holds the adapter's too
    if (p->defined() && p->requires_grad()) inputs.push_back(*p);
  torch::manual_seed(99);
  auto probe = torch::randn_like(y);
  return {y.detach(), torch::autograd::grad({(y * probe).sum()}, inputs)};
}

}  // namespace

TEST_CASE("fused LoRA Linear equals the op-by-op form with every gradient", "[unit][moe]") {
  for (double dropout : {0.0, 0.3}) {
    for (bool bias : {false, true}) {
      for (bool train_base : {false, true}) {
        DYNAMIC_SECTION("dropout " << dropout << " bias " << bias << " trainable base " << train_base) {
          torch::manual_seed(1);
          Linear base(LinearOptions(24, 40).bias(bias));
          for (auto& p : base->parameters()) p.set_requires_grad(train_base);
          Lora lora(LoraOptions(24, 40).rank(4).alpha(8.0).dropout(dropout));
          {
            torch::NoGradGuard no_grad;
            lora->lora_B->weight.normal_(0.0, 0.5);
          }
          base->attach(lora.ptr());
          auto x = torch::randn({3, 7, 24});
          for (bool training : {true, false}) {
            base->train(training);
            Outcome fused = run(base, lora, x, true, 5), plain = run(base, lora, x, false, 5);
            CHECK(max_abs_diff(fused.y, plain.y) < 1e-5);
            REQUIRE(fused.grads.size() == plain.grads.size());
            for (size_t i = 0; i < plain.grads.size(); ++i) CHECK(max_abs_diff(fused.grads[i], plain.grads[i]) < 1e-5);
          }
          if (dropout > 0) {  // and the mask does matter: another seed, another output
            base->train(true);
            CHECK(max_abs_diff(run(base, lora, x, true, 6).y, run(base, lora, x, true, 5).y) > 1e-3);
          }
        }
      }
    }
  }
}

TEST_CASE("linear-level MoLE through the fused LoRA Linear equals the op-by-op form with every gradient",
          "[unit][moe]") {
  for (int64_t k : {1, 2, 3}) {
    for (bool shared : {false, true}) {
      DYNAMIC_SECTION("top-" << k << (shared ? " with a shared expert" : "")) {
        torch::manual_seed(20 + k);
        Linear base(LinearOptions(12, 10));
        for (auto& p : base->parameters()) p.set_requires_grad(false);
        auto options = MoleOptions().n_experts(4).rank(3).alpha(6.0).dropout(0.2).shared_expert(shared);
        options.routing().top_k(k).gating(Gating::kNoisyTopk);  // noise and dropout: the same draws in both forms
        auto mole = std::make_shared<MoleLinearImpl>(MoleLinearOptions(12, 10, options).layer_name("fused"));
        {
          torch::NoGradGuard no_grad;
          for (auto& p : mole->parameters()) p.normal_(0.0, 0.4);
        }
        base->attach(mole);
        std::vector<torch::Tensor> params = mole->parameters();
        auto x_in = torch::randn({2, 9, 12});
        auto run = [&](bool fused) {
          auto x = x_in.clone().requires_grad_(true);
          torch::manual_seed(8);
          auto y = fused ? base->forward(x) : base->base_forward(x) + mole->delta(x);
          auto inputs = params;
          inputs.insert(inputs.begin(), x);
          torch::manual_seed(9);
          auto probe = torch::randn_like(y);
          return Outcome{y.detach(), torch::autograd::grad({(y * probe).sum()}, inputs, {}, std::nullopt, false,
                                                           /*allow_unused=*/true)};
        };
        Outcome fused = run(true), plain = run(false);
        CHECK(max_abs_diff(fused.y, plain.y) < 1e-5);
        REQUIRE(fused.grads.size() == plain.grads.size());
        for (size_t i = 0; i < plain.grads.size(); ++i) {
          REQUIRE(fused.grads[i].defined() == plain.grads[i].defined());
          if (plain.grads[i].defined()) CHECK(max_abs_diff(fused.grads[i], plain.grads[i]) < 1e-5);
        }
        CHECK(fused.grads[0].defined());  // x's
      }
    }
  }
}
