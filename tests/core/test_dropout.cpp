// mole's dropout: torch.nn.Dropout's function (keep with probability 1 - p, scale by 1 / (1 - p)) with its own
// mask generator: keep rates, independence of neighbours and of successive calls, gradients, seeding.
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include "core/dropout.h"

using namespace mole;

TEST_CASE("dropout keeps 1 - p of the elements, scaled, independently, and its gradient is the same mask",
          "[unit][core][dropout]") {
  for (double p : {0.05, 0.5, 0.9}) {
    INFO("p " << p);
    torch::manual_seed(0);
    auto x = (torch::rand({1000, 1000}) + 0.5).requires_grad_(true);
    auto y = fast_dropout(x, p, true);
    auto kept = (y != 0).to(torch::kFloat64);
    const double keep = 1.0 - p;
    // 1e6 draws: the standard error of the kept share is below 5e-4
    CHECK(kept.mean().item<double>() == Approx(keep).margin(2.5e-3));
    // kept elements scaled by 1 / (1 - p), exactly as torch.nn.Dropout
    auto ratio = (y.detach() / x.detach()).masked_select(y.detach() != 0);
    CHECK((ratio - 1.0 / keep).abs().max().item<double>() < 1e-5);
    // neighbours (along rows and columns) are independent: both kept with probability (1 - p)^2
    CHECK((kept.narrow(1, 0, 999) * kept.narrow(1, 1, 999)).mean().item<double>() == Approx(keep * keep).margin(3e-3));
    CHECK((kept.narrow(0, 0, 999) * kept.narrow(0, 1, 999)).mean().item<double>() == Approx(keep * keep).margin(3e-3));
    // a second call draws another mask
    auto again = (fast_dropout(x, p, true) != 0).to(torch::kFloat64);
    CHECK((kept * again).mean().item<double>() == Approx(keep * keep).margin(3e-3));
    // d sum(w * y) / dx = w * mask / (1 - p)
    auto w = torch::randn({1000, 1000});
    (y * w).sum().backward();
    CHECK(torch::allclose(x.grad(), w * kept.to(torch::kFloat32) / keep, 1e-5, 1e-6));
  }
}

TEST_CASE("dropout is reproducible under manual_seed, the identity when not training, float64 and bf16 alike",
          "[unit][core][dropout]") {
  auto x = torch::randn({37, 53}, torch::kFloat64);
  torch::manual_seed(5);
  auto a = fast_dropout(x, 0.3, true);
  torch::manual_seed(5);
  auto b = fast_dropout(x, 0.3, true);
  CHECK(torch::equal(a, b));
  CHECK(torch::equal(fast_dropout(x, 0.3, false), x));
  CHECK(torch::equal(fast_dropout(x, 0.0, true), x));
  auto h = fast_dropout(x.to(torch::kBFloat16), 0.3, true);
  CHECK(h.scalar_type() == torch::kBFloat16);
  CHECK_THROWS(fast_dropout(x, 1.0, true));
  Dropout module(0.3);
  module->eval();
  CHECK(torch::equal(module(x), x));
}
