// The fused RMSNorm, gated activation product and rotary embedding against their op-by-op forms in float64:
// outputs and every gradient, at widths that are and are not multiples of the vector width, on non-contiguous
// inputs, and the kernels' fallback for other activations.
#include <catch2/catch.hpp>

#include <vector>

#include <torch/torch.h>

#include "core/fused_ops.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

// Gradients of sum(y * probe) with respect to `inputs`.
std::vector<torch::Tensor> grads(const torch::Tensor& y, const torch::Tensor& probe,
                                 const std::vector<torch::Tensor>& inputs) {
  return torch::autograd::grad({(y * probe).sum()}, inputs);
}

torch::Tensor f64(const torch::Tensor& t) { return t.detach().to(torch::kFloat64).requires_grad_(true); }

}  // namespace

TEST_CASE("fused RMSNorm matches the op-by-op form with its gradients", "[unit][core]") {
  for (int64_t d : {16, 37, 512}) {
    torch::manual_seed(d);
    auto x = (torch::randn({3, 5, d}) * 2).requires_grad_(true);
    auto w = (torch::rand({d}) + 0.5).requires_grad_(true);
    auto y = rms_norm(x, w, 1e-5);
    auto x64 = f64(x), w64 = f64(w);
    auto want = unfused::rms_norm(x64, w64, 1e-5);
    CHECK(max_abs_diff(y.to(torch::kFloat64), want) < 1e-5);
    auto probe = torch::randn_like(want);
    auto got = grads(y, probe.to(torch::kFloat32), {x, w});
    auto ref = grads(want, probe, {x64, w64});
    CHECK(max_abs_diff(got[0].to(torch::kFloat64), ref[0]) < 1e-5);
    CHECK(max_abs_diff(got[1].to(torch::kFloat64), ref[1]) < 1e-4);  // a sum over 15 rows
  }
  // a frozen weight (no gradient asked for it) and a transposed input
  auto xt = torch::randn({6, 4}).requires_grad_(true);  // xt.t(): rows of 6, not contiguous
  auto w = torch::rand({6}) + 0.5;
  auto y = rms_norm(xt.t(), w, 1e-6);
  CHECK(max_abs_diff(y, unfused::rms_norm(xt.t(), w, 1e-6)) < 1e-6);
  y.sum().backward();
  auto xr = xt.detach().clone().requires_grad_(true);
  unfused::rms_norm(xr.t(), w, 1e-6).sum().backward();
  CHECK(max_abs_diff(xt.grad(), xr.grad()) < 1e-5);
}

TEST_CASE("fused SiLU(g) * u matches the op-by-op form with its gradients", "[unit][core]") {
  for (int64_t f : {7, 64, 1409}) {
    torch::manual_seed(f);
    auto g = (torch::randn({9, f}) * 4).requires_grad_(true);  // wide enough to reach the exp's clamps at +-88
    auto u = torch::randn({9, f}).requires_grad_(true);
    {
      torch::NoGradGuard no_grad;
      g[0][0] = 95.0;
      g[0][1] = -95.0;
    }
    auto y = gated_activation(Activation::kSilu, g, u);
    auto g64 = f64(g), u64 = f64(u);
    auto want = unfused::gated_activation(Activation::kSilu, g64, u64);
    CHECK(max_abs_diff(y.to(torch::kFloat64), want) / (1 + want.abs().max().item<double>()) < 1e-6);
    auto probe = torch::randn_like(want);
    auto got = grads(y, probe.to(torch::kFloat32), {g, u});
    auto ref = grads(want, probe, {g64, u64});
    CHECK(max_abs_diff(got[0].to(torch::kFloat64), ref[0]) < 1e-5);
    CHECK(max_abs_diff(got[1].to(torch::kFloat64), ref[1]) < 1e-5);
  }
  // the kernels without autograd, for every activation (the others take the op-by-op path)
  for (Activation act : {Activation::kSilu, Activation::kGelu, Activation::kGeluTanh, Activation::kQuickGelu,
                         Activation::kRelu}) {
    auto g = torch::randn({5, 33}).requires_grad_(true), u = torch::randn({5, 33}).requires_grad_(true);
    auto want = unfused::gated_activation(act, g, u);
    auto dy = torch::randn_like(want);
    auto ref = grads(want, dy, {g, u});
    torch::NoGradGuard no_grad;
    CHECK(max_abs_diff(gated_activation_forward(act, g, u), want) < 1e-6);
    auto [dg, du] = gated_activation_backward(act, g, u, dy);
    CHECK(max_abs_diff(dg, ref[0]) < 1e-5);
    CHECK(max_abs_diff(du, ref[1]) < 1e-5);
  }
}

TEST_CASE("fused rotary embedding matches the op-by-op form with its gradient", "[unit][core]") {
  for (int64_t dh : {4, 64, 18}) {
    torch::manual_seed(dh);
    auto angles = torch::rand({2, 7, dh / 2}) * 6;
    auto emb = torch::cat({angles, angles}, -1);
    auto cos = emb.cos(), sin = emb.sin();
    auto x = torch::randn({2, 7, 3, dh}).requires_grad_(true);
    auto y = rotary_embedding(x, cos, sin);
    auto x64 = f64(x);
    auto want = unfused::rotary_embedding(x64, cos.to(torch::kFloat64), sin.to(torch::kFloat64));
    CHECK(max_abs_diff(y.to(torch::kFloat64), want) < 1e-6);
    auto probe = torch::randn_like(want);
    CHECK(max_abs_diff(grads(y, probe.to(torch::kFloat32), {x})[0].to(torch::kFloat64),
                       grads(want, probe, {x64})[0]) < 1e-6);
  }
  // a non-contiguous input (heads and time swapped back)
  auto angles = torch::rand({1, 5, 4});
  auto cos = torch::cat({angles, angles}, -1).cos(), sin = torch::cat({angles, angles}, -1).sin();
  auto x = torch::randn({1, 2, 5, 8}).transpose(1, 2);
  CHECK(max_abs_diff(rotary_embedding(x, cos, sin), unfused::rotary_embedding(x, cos, sin)) < 1e-6);
  CHECK_THROWS_WITH(rotary_embedding(torch::randn({1, 5, 2, 6}), cos, sin), Catch::Contains("rotary_embedding"));
}
