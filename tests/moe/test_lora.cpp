// The fused LoRA Linear (one autograd function: frozen GEMM, dropout, low-rank pair, in-place adds) against the
// op-by-op form W x + b + s B A drop(x): outputs and the gradients of x, A, B (and of W, b when they train), with
// dropout on (the same mask from the same seed) and off, in training and eval mode.
#include <catch2/catch.hpp>

#include <vector>

#include <torch/torch.h>

#include "moe/lora.h"
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
