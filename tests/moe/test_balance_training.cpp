// A balance loss does what it is for: a MoLE layer trained on skewed inputs, whose router starts by sending
// most tokens to one expert, spreads its load when the Switch auxiliary loss is on and keeps it concentrated
// when the loss is off (the task alone gives the router no reason to spread).
#include <catch2/catch.hpp>

#include <torch/torch.h>

#include "moe/balance.h"
#include "moe/mole_linear.h"
#include "moe/routing_context.h"

using namespace mole;

namespace {

// Load CV^2 (counts of top-1 choices) after training with the given auxiliary-loss coefficient.
std::pair<double, double> train(double switch_aux) {
  torch::manual_seed(7);
  const int64_t n = 256, d = 16, out = 8;
  BalanceLossOptions aux;
  aux.switch_aux = switch_aux;
  auto options =
      MoleOptions().n_experts(4).routing(RoutingOptions().top_k(1)).rank(4).alpha(4.0).losses(aux).dispatch(Dispatch::kDense);
  MoleLinear mole(MoleLinearOptions(d, out, options).layer_name("skewed"));
  // Skewed inputs: a large common offset along one direction, and a router that already prefers expert 0 there.
  auto direction = torch::randn({d});
  direction = direction / direction.norm();
  auto x = torch::randn({n, d}) * 0.5 + 3.0 * direction;
  {
    torch::NoGradGuard no_grad;
    mole->router->weight.normal_(0.0, 0.1);
    mole->router->weight[0].add_(direction);
  }
  auto target = torch::matmul(x, torch::randn({d, out})) * 0.1;
  torch::optim::Adam opt(mole->parameters(), torch::optim::AdamOptions(1e-2));

  auto load_cv2 = [&] {
    torch::NoGradGuard no_grad;
    auto r = mole->router->forward(x, torch::zeros({n}, torch::kInt64));
    return load_loss(r, torch::ones({n}, torch::kBool)).item<double>();
  };
  double before = load_cv2();
  for (int step = 0; step < 150; ++step) {
    LayerLosses losses;
    RoutingSinkScope record(RoutingSinks{nullptr, &losses});
    auto loss = torch::mse_loss(mole->delta(x), target);
    loss = loss + sum_over_layers(losses).total;
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  return {before, load_cv2()};
}

}  // namespace

TEST_CASE("switch_aux loss spreads a collapsed router's load and without it the load stays skewed",
          "[unit][moe][balance]") {
  auto [off_before, off_after] = train(0.0);
  auto [on_before, on_after] = train(0.5);
  INFO("load CV^2 without loss: " << off_before << " -> " << off_after << "; with loss: " << on_before << " -> "
                                  << on_after);
  CHECK(off_before == Approx(on_before));  // same start
  CHECK(off_before > 1.0);                 // most tokens on one expert
  CHECK(on_after < 0.25 * on_before);      // the loss spreads them
  CHECK(off_after > 0.5 * off_before);     // the task alone does not
}
