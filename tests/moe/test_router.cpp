// The router against naive references written as plain loops over tokens and experts, in float64:
// every gating rule and routing mode, outputs and gradients; tie-breaking; float32 routing under bfloat16 inputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "moe/router.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

// Reference gates (N, E) in float64 from logits (N, E) and allowed (N, E), token by token.
torch::Tensor naive_gates(const torch::Tensor& logits, const torch::Tensor& allowed, int64_t k, Gating gating,
                          bool renormalize) {
  int64_t n = logits.size(0), e = logits.size(1);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < n; ++t) {
    std::vector<int64_t> candidates;
    for (int64_t i = 0; i < e; ++i)
      if (allowed[t][i].item<bool>()) candidates.push_back(i);
    // k largest, lower index first on ties
    std::vector<int64_t> order = candidates;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return logits[t][a].item<double>() > logits[t][b].item<double>();
    });
    order.resize(k);
    std::vector<torch::Tensor> g(e, torch::zeros({}, logits.options()));
    if (gating == Gating::kSoftmaxTopk) {
      auto denom = torch::zeros({}, logits.options());
      for (int64_t i : candidates) denom = denom + torch::exp(logits[t][i]);
      auto chosen_sum = torch::zeros({}, logits.options());
      for (int64_t i : order) chosen_sum = chosen_sum + torch::exp(logits[t][i]) / denom;
      for (int64_t i : order) g[i] = torch::exp(logits[t][i]) / denom / (renormalize ? chosen_sum : torch::ones({}, logits.options()));
    } else {
      auto denom = torch::zeros({}, logits.options());
      for (int64_t i : order) denom = denom + torch::exp(logits[t][i]);
      for (int64_t i : order) g[i] = torch::exp(logits[t][i]) / denom;
    }
    rows.push_back(torch::stack(g));
  }
  return torch::stack(rows);
}

// The router's logits recomputed by hand in float64 from its weights.
torch::Tensor naive_logits(RouterImpl& router, const torch::Tensor& x, const torch::Tensor& modality,
                           const torch::Tensor& weight64, const torch::Tensor& embed64) {
  int64_t n = x.size(0), e = router.options.n_experts();
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < n; ++t) {
    auto h = x[t];
    if (embed64.defined()) h = h + embed64[modality[t].item<int64_t>()];
    std::vector<torch::Tensor> z;
    for (int64_t i = 0; i < e; ++i) z.push_back((weight64[i] * h).sum());
    rows.push_back(torch::stack(z));
  }
  return torch::stack(rows);
}

struct Case {
  Gating gating;
  bool renormalize;
  RoutingMode mode;
};

}  // namespace

TEST_CASE("router gating and routing modes equal naive loops, outputs and gradients", "[unit][moe][router]") {
  const int64_t n = 7, d = 5, e = 4, k = 2;
  std::vector<Case> cases = {{Gating::kTopkSoftmax, false, RoutingMode::kLearned},
                             {Gating::kSoftmaxTopk, false, RoutingMode::kLearned},
                             {Gating::kSoftmaxTopk, true, RoutingMode::kLearned},
                             {Gating::kNoisyTopk, false, RoutingMode::kLearned},  // eval: no noise
                             {Gating::kTopkSoftmax, false, RoutingMode::kModalityGrouped},
                             {Gating::kSoftmaxTopk, true, RoutingMode::kModalityGrouped},
                             {Gating::kTopkSoftmax, false, RoutingMode::kModalityEmbed}};
  for (const auto& c : cases) {
    INFO("gating " << enum_name(c.gating) << " renormalize " << c.renormalize << " mode " << enum_name(c.mode));
    torch::manual_seed(3);
    auto options = RouterOptions(d, e, RoutingOptions().top_k(k).gating(c.gating).renormalize(c.renormalize).mode(c.mode));
    if (c.mode == RoutingMode::kModalityGrouped) options.routing().expert_modality({0, 0, 1, -1});  // text 0,1; image 2; shared 3
    Router router(options);
    router->eval();
    {
      torch::NoGradGuard no_grad;
      router->weight.normal_();
      if (router->modality_embedding.defined()) router->modality_embedding.normal_();
    }
    auto x = torch::randn({n, d}, torch::kFloat64).requires_grad_(true);
    auto modality = torch::tensor({0, 1, 0, 1, 1, 0, 0}, torch::kInt64);
    Routing r = router->forward(x, modality);
    REQUIRE(r.gates.scalar_type() == torch::kFloat32);

    auto w64 = router->weight.detach().to(torch::kFloat64).requires_grad_(true);
    auto emb64 = router->modality_embedding.defined() ? router->modality_embedding.detach().to(torch::kFloat64)
                                                      : torch::Tensor();
    auto x64 = x.detach().clone().requires_grad_(true);
    auto logits = naive_logits(*router, x64, modality, w64, emb64);
    auto allowed = router->allowed_by_modality().index_select(0, modality);
    auto want = naive_gates(logits, allowed, k, c.gating, c.renormalize);
    CHECK(max_abs_diff(r.gates, want) < 1e-5);  // float32 router vs float64 loops

    // The same upstream gradient through both: d/dx and d/dW_g.
    auto upstream = torch::randn({n, e}, torch::kFloat64);
    (r.gates.to(torch::kFloat64) * upstream).sum().backward();
    (want * upstream).sum().backward();
    CHECK(max_abs_diff(x.grad(), x64.grad()) < 1e-5);
    CHECK(max_abs_diff(router->weight.grad().to(torch::kFloat64), w64.grad()) < 1e-5);

    // modality_grouped never sends a token outside its group
    if (c.mode == RoutingMode::kModalityGrouped) {
      auto outside = r.gates.gt(0) & allowed.logical_not();
      CHECK(outside.sum().item<int64_t>() == 0);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t j = 0; j < k; ++j) {
          int64_t expert = r.topk_index[t][j].item<int64_t>();
          CHECK(allowed[t][expert].item<bool>());
        }
    }
  }
}

TEST_CASE("top-k ties go to the lower expert index", "[unit][moe][router]") {
  auto logits = torch::tensor({{1.0f, 3.0f, 3.0f, 3.0f}, {0.0f, 0.0f, 0.0f, 0.0f}, {2.0f, 1.0f, 2.0f, 1.0f}});
  auto allowed = torch::ones({3, 4}, torch::kBool);
  for (int run = 0; run < 3; ++run) {
    auto r = route_from_logits(logits, allowed, 2, Gating::kTopkSoftmax, false);
    CHECK(torch::equal(r.topk_index, torch::tensor({{1, 2}, {0, 1}, {0, 2}}, torch::kInt64)));
  }
}

TEST_CASE("router runs in float32 under bfloat16 inputs", "[unit][moe][router]") {
  torch::manual_seed(0);
  Router router(RouterOptions(8, 4, RoutingOptions().top_k(2)));
  auto x = torch::randn({5, 8}).to(torch::kBFloat16);
  auto r = router->forward(x, torch::zeros({5}, torch::kInt64));
  CHECK(router->weight.scalar_type() == torch::kFloat32);
  for (const auto& t : {r.logits, r.probs, r.topk_weight, r.gates}) CHECK(t.scalar_type() == torch::kFloat32);
  // same routing as float32 inputs holding the same values
  auto r32 = router->forward(x.to(torch::kFloat32), torch::zeros({5}, torch::kInt64));
  CHECK(torch::equal(r.gates, r32.gates));

  SECTION("and under bfloat16 autocast (optim.bf16): logits as without it, gradients reach the router") {
    auto xf = torch::randn({6, 8}).set_requires_grad(true);
    auto plain = router->forward(xf, torch::zeros({6}, torch::kInt64));
    const bool was_on = at::autocast::is_autocast_enabled(at::kCPU);
    const auto was_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    auto cast = router->forward(xf, torch::zeros({6}, torch::kInt64));
    auto h = torch::linear(xf, router->weight);  // what autocast does to a linear outside the router
    at::autocast::set_autocast_enabled(at::kCPU, was_on);
    at::autocast::set_autocast_dtype(at::kCPU, was_dtype);
    CHECK(h.scalar_type() == torch::kBFloat16);
    CHECK(cast.logits.scalar_type() == torch::kFloat32);
    CHECK(torch::equal(cast.logits, plain.logits));
    cast.gates.sum().backward();
    CHECK(router->weight.grad().defined());
  }
}

TEST_CASE("noisy top-k and jitter act in training only", "[unit][moe][router]") {
  torch::manual_seed(0);
  Router noisy(RouterOptions(6, 4, RoutingOptions().top_k(1).gating(Gating::kNoisyTopk).jitter(0.1)));
  auto x = torch::randn({64, 6});
  auto modality = torch::zeros({64}, torch::kInt64);
  noisy->eval();
  auto a = noisy->forward(x, modality), b = noisy->forward(x, modality);
  CHECK(torch::equal(a.gates, b.gates));
  CHECK(max_abs_diff(a.logits, torch::linear(x, noisy->weight)) < 1e-6);
  noisy->train();
  auto c = noisy->forward(x, modality);
  CHECK(max_abs_diff(c.logits, a.logits) > 1e-3);  // noise and jitter perturb the logits
}

TEST_CASE("modality_grouped refuses groups smaller than top_k and bad modality ids", "[unit][moe][router]") {
  CHECK_THROWS_WITH(Router(RouterOptions(4, 3, RoutingOptions().top_k(2).mode(RoutingMode::kModalityGrouped).expert_modality({0, 0, 1}))),
                    Catch::Contains("modality 1 may use 1 experts, fewer than top_k = 2"));
  CHECK_THROWS_WITH(Router(RouterOptions(4, 3, RoutingOptions().top_k(1).mode(RoutingMode::kModalityGrouped).expert_modality({0, 5, 1}))),
                    Catch::Contains("expert_modality[1] = 5"));
}
