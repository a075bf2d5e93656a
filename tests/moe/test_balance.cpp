// Balance and stability losses (moe/balance.h) against hand-written float64 loops over tokens and experts
// (docs/MOE.md "Balance and stability losses"), a few literal hand-computed numbers, gradients against central finite
// differences of those loops, padding, per-modality losses over an `allowed` split, and no valid tokens.
// Routings are made by hand (tests/moe/hand_routing.h), not by the router.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/json_config.h"
#include "moe/balance.h"
#include "tests/moe/hand_routing.h"
#include "tests/test_util.h"

using namespace mole;
using namespace mole::test;  // hand-made routings (tests/moe/hand_routing.h)

namespace {

// ---- the losses as plain loops in float64 (a selection is a 0/1 list; empty = all) ----

using Selection = std::vector<char>;
bool selected(const Selection& s, int64_t i) { return s.empty() || s[size_t(i)] != 0; }

double count_selected(const Selection& s, int64_t size) {
  double c = 0;
  for (int64_t i = 0; i < size; ++i) c += selected(s, i) ? 1 : 0;
  return c;
}

// Shazeer's cv_squared: x.var() / (x.mean()^2 + 1e-10), unbiased var, 0 for fewer than 2 values.
double ref_cv_squared(const std::vector<double>& x) {
  if (x.size() < 2) return 0.0;
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= double(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  var /= double(x.size() - 1);
  return var / (mean * mean + 1e-10);
}

double ref_switch_aux(const HandRouting& h, const Selection& mask, const Selection& experts, bool use_topk) {
  double tokens = count_selected(mask, h.n), n = count_selected(experts, h.e);
  if (tokens == 0) return 0.0;
  double sum = 0;
  for (int64_t i = 0; i < h.e; ++i) {
    if (!selected(experts, i)) continue;
    double p = 0, routed = 0;
    for (int64_t t = 0; t < h.n; ++t) {
      if (!selected(mask, t)) continue;
      p += h.prob(t, i);
      for (int64_t s = 0; s < (use_topk ? h.k : 1); ++s) routed += h.index(t, s) == i ? 1 : 0;
    }
    double mean_prob = p / tokens, fraction = routed / (tokens * (use_topk ? h.k : 1));
    sum += fraction * mean_prob;
  }
  return n * sum;  // N * sum_i f_i * P_i
}

// CV^2 over the selected experts of value(i).
template <typename Value>
double ref_cv_over_experts(const HandRouting& h, const Selection& experts, Value value) {
  std::vector<double> values;
  for (int64_t i = 0; i < h.e; ++i)
    if (selected(experts, i)) values.push_back(value(i));
  return ref_cv_squared(values);
}

double ref_importance(const HandRouting& h, const Selection& mask, const Selection& experts) {
  return ref_cv_over_experts(h, experts, [&](int64_t i) {  // Importance_i = sum_t gates_ti
    double sum = 0;
    for (int64_t t = 0; t < h.n; ++t)
      if (selected(mask, t)) sum += h.gate(t, i);
    return sum;
  });
}

double ref_load(const HandRouting& h, const Selection& mask, const Selection& experts) {
  return ref_cv_over_experts(h, experts, [&](int64_t i) {  // tokens with i among their top-k
    double c = 0;
    for (int64_t t = 0; t < h.n; ++t)
      for (int64_t s = 0; s < h.k; ++s) c += selected(mask, t) && h.index(t, s) == i ? 1 : 0;
    return c;
  });
}

double ref_z_loss(const HandRouting& h, const Selection& mask, const Selection& experts) {
  double tokens = 0, sum = 0;
  for (int64_t t = 0; t < h.n; ++t) {
    if (!selected(mask, t)) continue;
    tokens += 1;
    double top = -INFINITY;
    for (int64_t i = 0; i < h.e; ++i)
      if (selected(experts, i)) top = std::max(top, h.logit(t, i));
    double s = 0;
    for (int64_t i = 0; i < h.e; ++i)
      if (selected(experts, i) && std::isfinite(h.logit(t, i))) s += std::exp(h.logit(t, i) - top);
    double lse = top + std::log(s);
    sum += lse * lse;
  }
  return tokens == 0 ? 0.0 : sum / tokens;  // (1/T) sum_t (logsumexp_i z_ti)^2
}

double ref_sq_dev(const HandRouting& h, const Selection& mask, const Selection& experts) {
  double tokens = count_selected(mask, h.n), n = count_selected(experts, h.e);
  if (tokens == 0) return 0.0;
  double sum = 0;
  for (int64_t i = 0; i < h.e; ++i) {
    if (!selected(experts, i)) continue;
    double g = 0;
    for (int64_t t = 0; t < h.n; ++t)
      if (selected(mask, t)) g += h.gate(t, i);
    double d = 1.0 / n - g / tokens;
    sum += d * d;  // (1/N - mean_t G_i)^2
  }
  return sum;
}

torch::Tensor to_mask(const Selection& s) {
  std::vector<int64_t> v(s.begin(), s.end());
  return bools(v);
}

double value(const torch::Tensor& t) { return t.item<double>(); }

// A random routing: N tokens, E experts, top-k, logits ~ N(0, 1.5^2); allowed empty = all.
HandRouting random_routing(int64_t n, int64_t e, int64_t k, uint64_t seed, const std::vector<char>& allowed = {}) {
  return hand_routing(random_normal(n * e, seed, 1.5), n, e, k, allowed);
}

torch::Tensor leaf(const torch::Tensor& t) { return t.detach().clone().requires_grad_(true); }

// Central finite differences of f with respect to each finite entry of `values` (changed in place and restored).
std::vector<double> finite_difference(std::vector<double>& values, const std::function<double()>& f) {
  const double eps = 1e-6;
  std::vector<double> grad(values.size(), 0.0);
  for (size_t j = 0; j < values.size(); ++j) {
    if (!std::isfinite(values[j])) continue;
    double keep = values[j];
    values[j] = keep + eps;
    double up = f();
    values[j] = keep - eps;
    double down = f();
    values[j] = keep;
    grad[j] = (up - down) / (2 * eps);
  }
  return grad;
}

double max_diff(const torch::Tensor& grad, const std::vector<double>& expected) {
  auto g = grad.to(torch::kFloat64).contiguous().view(-1);
  REQUIRE(g.numel() == int64_t(expected.size()));
  double worst = 0;
  for (int64_t j = 0; j < g.numel(); ++j) worst = std::max(worst, std::abs(g[j].item<double>() - expected[size_t(j)]));
  return worst;
}

// The literal routing of the hand-computed test: 4 tokens, 2 experts, top-1 (Switch's softmax_topk, no
// renormalisation: the gate is the chosen probability).
//   probs  t0 (0.9, 0.1)  t1 (0.8, 0.2)  t2 (0.3, 0.7)  t3 (0.6, 0.4)  -> top-1: 0, 0, 1, 0
//   logits log(p) + c_t with c = (1, -1, 2, 0), so logsumexp_t = c_t
Routing literal_routing() {
  Routing r;
  std::vector<double> p = {0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.6, 0.4};
  std::vector<double> c = {1, -1, 2, 0};
  std::vector<double> z(8), g = {0.9, 0, 0.8, 0, 0, 0.7, 0.6, 0};
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 2; ++i) z[size_t(2 * t + i)] = std::log(p[size_t(2 * t + i)]) + c[size_t(t)];
  auto f64 = torch::dtype(torch::kFloat64);
  r.logits = torch::tensor(z, f64).view({4, 2}).to(torch::kFloat32);
  r.probs = torch::tensor(p, f64).view({4, 2}).to(torch::kFloat32);
  r.gates = torch::tensor(g, f64).view({4, 2}).to(torch::kFloat32);
  r.topk_index = torch::tensor(std::vector<int64_t>{0, 0, 1, 0}, torch::kInt64).view({4, 1});
  r.topk_weight = torch::tensor(std::vector<double>{0.9, 0.8, 0.7, 0.6}, f64).view({4, 1}).to(torch::kFloat32);
  r.allowed = torch::ones({4, 2}, torch::kBool);
  return r;
}

BalanceLossOptions all_losses(bool per_modality, bool use_topk = false) {
  BalanceLossOptions o;
  o.switch_aux = 0.01;
  o.importance = 0.02;
  o.load = 0.03;
  o.z_loss = 0.001;
  o.sq_dev = 0.5;
  o.per_modality = per_modality;
  o.switch_use_topk = use_topk;
  return o;
}

}  // namespace

TEST_CASE("balance losses match hand-computed numbers on 4 tokens and 2 experts", "[unit][moe][balance]") {
  Routing r = literal_routing();
  torch::Tensor all;  // undefined: every token
  // P = ((0.9+0.8+0.3+0.6)/4, (0.1+0.2+0.7+0.4)/4) = (0.65, 0.35); f = (3/4, 1/4)
  // switch_aux = 2 * (0.75*0.65 + 0.25*0.35) = 2 * 0.575 = 1.15
  CHECK(value(switch_aux_loss(r, all)) == Approx(1.15).epsilon(1e-6));
  // top-k = top-1 here, so the top-k form is the same: 1.15
  CHECK(value(switch_aux_loss(r, all, {}, true)) == Approx(1.15).epsilon(1e-6));
  // Importance = (0.9+0.8+0.6, 0.7) = (2.3, 0.7); mean 1.5; unbiased var = (0.8^2 + 0.8^2) / 1 = 1.28
  // importance = 1.28 / (1.5^2 + 1e-10) = 0.568888...
  CHECK(value(importance_loss(r, all)) == Approx(1.28 / 2.25).epsilon(1e-6));
  // counts = (3, 1); mean 2; var = (1 + 1) / 1 = 2; load = 2 / 4 = 0.5
  CHECK(value(load_loss(r, all)) == Approx(0.5).epsilon(1e-6));
  // logsumexp_t = c_t = (1, -1, 2, 0): z_loss = (1 + 1 + 4 + 0) / 4 = 1.5
  CHECK(value(z_loss(r, all)) == Approx(1.5).epsilon(1e-6));
  // mean gates = (2.3/4, 0.7/4) = (0.575, 0.175): (0.5-0.575)^2 + (0.5-0.175)^2 = 0.005625 + 0.105625 = 0.11125
  CHECK(value(sq_dev_loss(r, all)) == Approx(0.11125).epsilon(1e-6));

  // Only tokens 0 and 2 (mask), both experts: P = (0.6, 0.4), f = (0.5, 0.5): 2 * (0.3 + 0.2) = 1.0
  auto mask02 = bools({1, 0, 1, 0});
  CHECK(value(switch_aux_loss(r, mask02)) == Approx(1.0).epsilon(1e-6));
  // Importance = (0.9, 0.7): mean 0.8, var = 0.01 + 0.01 = 0.02: 0.02 / 0.64 = 0.03125
  CHECK(value(importance_loss(r, mask02)) == Approx(0.03125).epsilon(1e-5));

  // balance_losses: every term, and total = 0.01*1.15 + 0.02*0.568889 + 0.03*0.5 + 0.001*1.5 + 0.5*0.11125
  auto modality = torch::zeros({4}, torch::kInt64);
  auto valid = torch::ones({4}, torch::kBool);
  BalanceLosses losses = balance_losses(r, modality, valid, all_losses(false));
  REQUIRE(losses.terms.size() == 5);
  CHECK(value(losses.terms.at("switch_aux")) == Approx(1.15).epsilon(1e-6));
  CHECK(value(losses.terms.at("importance")) == Approx(1.28 / 2.25).epsilon(1e-6));
  CHECK(value(losses.terms.at("load")) == Approx(0.5).epsilon(1e-6));
  CHECK(value(losses.terms.at("z_loss")) == Approx(1.5).epsilon(1e-6));
  CHECK(value(losses.terms.at("sq_dev")) == Approx(0.11125).epsilon(1e-6));
  CHECK(value(losses.total) ==
        Approx(0.01 * 1.15 + 0.02 * 1.28 / 2.25 + 0.03 * 0.5 + 0.001 * 1.5 + 0.5 * 0.11125).epsilon(1e-6));
  for (const auto& [name, term] : losses.terms) {
    CHECK(term.dim() == 0);
    CHECK(term.scalar_type() == torch::kFloat32);
  }

  // A perfectly balanced top-1 routing (uniform probs, tokens split evenly, renormalised gates of 1) gives
  // switch_aux = 1, and importance, load and sq_dev 0 (mean gate 1/2 per expert = 1/N).
  Routing u = literal_routing();
  u.probs = torch::full({4, 2}, 0.5);
  u.logits = torch::zeros({4, 2});
  u.topk_index = torch::tensor(std::vector<int64_t>{0, 1, 0, 1}, torch::kInt64).view({4, 1});
  u.gates = torch::tensor(std::vector<float>{1, 0, 0, 1, 1, 0, 0, 1}).view({4, 2});
  CHECK(value(switch_aux_loss(u, all)) == Approx(1.0).epsilon(1e-6));
  CHECK(value(importance_loss(u, all)) == Approx(0.0).margin(1e-7));
  CHECK(value(load_loss(u, all)) == Approx(0.0).margin(1e-7));
  CHECK(value(sq_dev_loss(u, all)) == Approx(0.0).margin(1e-7));
  // logsumexp of (0, 0) is log 2 for every token: z_loss = (log 2)^2
  CHECK(value(z_loss(u, all)) == Approx(std::log(2.0) * std::log(2.0)).epsilon(1e-6));
}

TEST_CASE("balance losses match float64 loops for random routings, masks and expert subsets",
          "[unit][moe][balance]") {
  // float32 losses against float64 loops over the same float32-rounded routing: sums of ~20 terms of size ~1
  // lose ~1e-6 relative; 1e-5 leaves room for the CV^2 division.
  const double rel = 1e-5, abs_margin = 1e-6;
  for (int64_t k : {1, 2, 3}) {
    for (uint64_t seed : {1u, 2u, 3u}) {
      Routing r = random_routing(17, 5, k, seed * 10 + uint64_t(k)).to_routing();
      HandRouting h = hand_from(r);
      Selection all_tokens, all_experts;
      Selection some_tokens(17, 1), some_experts = {1, 0, 1, 1, 0};
      for (int t = 0; t < 17; t += 3) some_tokens[size_t(t)] = 0;
      for (const auto& mask : {all_tokens, some_tokens}) {
        for (const auto& experts : {all_experts, some_experts}) {
          INFO("k " << k << " seed " << seed << " masked " << !mask.empty() << " expert subset " << !experts.empty());
          torch::Tensor m = mask.empty() ? torch::Tensor() : to_mask(mask);
          torch::Tensor e = experts.empty() ? torch::Tensor() : to_mask(experts);
          for (bool use_topk : {false, true})
            CHECK(value(switch_aux_loss(r, m, e, use_topk)) ==
                  Approx(ref_switch_aux(h, mask, experts, use_topk)).epsilon(rel).margin(abs_margin));
          CHECK(value(importance_loss(r, m, e)) == Approx(ref_importance(h, mask, experts)).epsilon(rel).margin(abs_margin));
          CHECK(value(load_loss(r, m, e)) == Approx(ref_load(h, mask, experts)).epsilon(rel).margin(abs_margin));
          CHECK(value(z_loss(r, m, e)) == Approx(ref_z_loss(h, mask, experts)).epsilon(rel).margin(abs_margin));
          CHECK(value(sq_dev_loss(r, m, e)) == Approx(ref_sq_dev(h, mask, experts)).epsilon(rel).margin(abs_margin));
        }
      }
    }
  }
  // A single expert considered: CV^2 of one value is 0 (as cv_squared), not NaN.
  Routing r = random_routing(6, 3, 1, 99).to_routing();
  auto one_expert = bools({0, 1, 0});
  CHECK(value(importance_loss(r, {}, one_expert)) == 0.0);
  CHECK(value(load_loss(r, {}, one_expert)) == 0.0);
}

TEST_CASE("balance loss gradients match finite differences of the float64 loops", "[unit][moe][balance]") {
  // Each differentiable loss reads one routing tensor: switch_aux the probs (f is a count), importance and
  // sq_dev the gates, z_loss the logits. The gradient from autograd (float64, then float32) is compared with
  // central differences (eps 1e-6, error ~1e-10) of the loops, one entry at a time.
  HandRouting base = random_routing(7, 4, 2, 5);
  // And one with an allowed split (experts 0-1 for tokens 0-3, 2-3 for the rest): -inf logits, 0 probs.
  std::vector<char> allowed;
  for (int t = 0; t < 7; ++t)
    for (int i = 0; i < 4; ++i) allowed.push_back((t < 4) == (i < 2) ? 1 : 0);
  HandRouting split = random_routing(7, 4, 1, 6, allowed);
  Selection mask = {1, 1, 0, 1, 1, 1, 0};
  Selection experts = {1, 1, 0, 1};

  struct Loss {
    std::string name;
    std::function<torch::Tensor(const Routing&, const torch::Tensor&, const torch::Tensor&)> loss;
    std::function<double(const HandRouting&, const Selection&, const Selection&)> reference;
    std::vector<double> HandRouting::*input;
    torch::Tensor Routing::*tensor;
  };
  std::vector<Loss> losses = {
      {"switch_aux", [](const Routing& r, const torch::Tensor& m, const torch::Tensor& e) { return switch_aux_loss(r, m, e); },
       [](const HandRouting& h, const Selection& m, const Selection& e) { return ref_switch_aux(h, m, e, false); },
       &HandRouting::probs, &Routing::probs},
      {"switch_aux topk",
       [](const Routing& r, const torch::Tensor& m, const torch::Tensor& e) { return switch_aux_loss(r, m, e, true); },
       [](const HandRouting& h, const Selection& m, const Selection& e) { return ref_switch_aux(h, m, e, true); },
       &HandRouting::probs, &Routing::probs},
      {"importance", [](const Routing& r, const torch::Tensor& m, const torch::Tensor& e) { return importance_loss(r, m, e); },
       ref_importance, &HandRouting::gates, &Routing::gates},
      {"z_loss", [](const Routing& r, const torch::Tensor& m, const torch::Tensor& e) { return z_loss(r, m, e); },
       ref_z_loss, &HandRouting::logits, &Routing::logits},
      {"sq_dev", [](const Routing& r, const torch::Tensor& m, const torch::Tensor& e) { return sq_dev_loss(r, m, e); },
       ref_sq_dev, &HandRouting::gates, &Routing::gates},
  };
  for (const HandRouting* routing : {&base, &split}) {
    for (bool use_selection : {false, true}) {
      Selection m = use_selection ? mask : Selection(), e = use_selection ? experts : Selection();
      for (const auto& loss : losses) {
        INFO(loss.name << (routing == &split ? " (allowed split)" : "") << (use_selection ? " masked" : ""));
        HandRouting h = hand_from(routing->to_routing(torch::kFloat64));
        std::vector<double>& values = h.*(loss.input);
        auto expected = finite_difference(values, [&] { return loss.reference(h, m, e); });
        for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
          Routing r = routing->to_routing(dtype);
          r.*(loss.tensor) = leaf(r.*(loss.tensor));
          auto out = loss.loss(r, m.empty() ? torch::Tensor() : to_mask(m), e.empty() ? torch::Tensor() : to_mask(e));
          CHECK(out.scalar_type() == dtype);
          out.backward();
          auto grad = (r.*(loss.tensor)).grad();
          REQUIRE(grad.defined());
          CHECK(torch::isfinite(grad).all().item<bool>());
          // float32: the routing itself is rounded to ~6e-8 relative; gradients of size ~1 agree to ~1e-5.
          CHECK(max_diff(grad, expected) < (dtype == torch::kFloat64 ? 1e-7 : 2e-5));
        }
      }
    }
  }
  // load is a count: no gradient.
  Routing r = base.to_routing();
  r.probs = leaf(r.probs);
  r.gates = leaf(r.gates);
  r.logits = leaf(r.logits);
  CHECK_FALSE(load_loss(r, {}).requires_grad());
  // balance_losses' total backpropagates into all three.
  auto losses_out = balance_losses(r, torch::zeros({7}, torch::kInt64), torch::ones({7}, torch::kBool), all_losses(false));
  losses_out.total.backward();
  for (auto* t : {&r.probs, &r.gates, &r.logits}) {
    REQUIRE(t->grad().defined());
    CHECK(t->grad().abs().sum().item<double>() > 0);
  }
}

TEST_CASE("balance losses ignore padding tokens, whatever they hold", "[unit][moe][balance]") {
  // The same 9 tokens with 5 padding rows interleaved: the padding holds NaN probabilities and gates, NaN logits
  // and out-of-range expert indices. Every loss, and its gradient on the real tokens, is unchanged; the padding
  // rows get a zero gradient (not NaN).
  HandRouting h = random_routing(9, 4, 2, 21);
  Routing small = h.to_routing();
  std::vector<int64_t> is_real = {1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1};
  int64_t n = int64_t(is_real.size());
  auto valid = bools(is_real);
  auto where_real = torch::nonzero(valid).view(-1);
  auto spread = [&](const torch::Tensor& t, double fill) {  // rows of `t` on the real tokens, `fill` elsewhere
    auto out = torch::full({n, t.size(1)}, fill, t.options());
    out.index_copy_(0, where_real, t);
    return out;
  };
  Routing big;
  big.logits = leaf(spread(small.logits, NAN));
  big.probs = leaf(spread(small.probs, NAN));
  big.gates = leaf(spread(small.gates, NAN));
  big.topk_weight = spread(small.topk_weight, NAN);
  big.topk_index = spread(small.topk_index, 99);
  big.allowed = spread(small.allowed, 0);
  small.logits = leaf(small.logits);
  small.probs = leaf(small.probs);
  small.gates = leaf(small.gates);
  auto modality = torch::zeros({n}, torch::kInt64);
  for (bool per_modality : {false, true}) {
    for (bool use_topk : {false, true}) {
      INFO("per_modality " << per_modality << " use_topk " << use_topk);
      for (auto* t : {&small.logits, &small.probs, &small.gates, &big.logits, &big.probs, &big.gates})
        t->mutable_grad() = torch::Tensor();
      auto options = all_losses(per_modality, use_topk);
      BalanceLosses a = balance_losses(small, torch::zeros({9}, torch::kInt64), torch::ones({9}, torch::kBool), options);
      BalanceLosses b = balance_losses(big, modality, valid, options);
      for (const auto& [name, term] : a.terms) {
        INFO(name);
        CHECK(value(b.terms.at(name)) == Approx(value(term)).epsilon(1e-6));
      }
      CHECK(value(b.total) == Approx(value(a.total)).epsilon(1e-6));
      a.total.backward();
      b.total.backward();
      for (auto member : {&Routing::logits, &Routing::probs, &Routing::gates}) {
        auto gb = (big.*member).grad();
        CHECK(torch::isfinite(gb).all().item<bool>());
        CHECK(mole::test::max_abs_diff(gb.index_select(0, where_real), (small.*member).grad()) < 1e-6);
        CHECK(gb.index_select(0, torch::nonzero(~valid).view(-1)).abs().sum().item<double>() == 0.0);
      }
    }
  }
}

TEST_CASE("per-modality balance losses average each modality over its own experts", "[unit][moe][balance]") {
  // 4 experts: 0-1 serve text, 2-3 serve images (the `allowed` rows, as modality_grouped routing makes them).
  // Each term is the mean over the modalities present of the loss on that modality's valid tokens and experts.
  std::vector<int64_t> modality = {0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1};
  std::vector<int64_t> valid = {1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1};
  int64_t n = int64_t(modality.size());
  std::vector<char> allowed;
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < 4; ++i) allowed.push_back((modality[size_t(t)] == 0) == (i < 2) ? 1 : 0);
  for (int64_t k : {1, 2}) {
    Routing r = random_routing(n, 4, k, 31 + uint64_t(k), allowed).to_routing();
    HandRouting h = hand_from(r);
    Selection text_tokens, image_tokens;
    for (int64_t t = 0; t < n; ++t) {
      text_tokens.push_back(valid[size_t(t)] && modality[size_t(t)] == 0);
      image_tokens.push_back(valid[size_t(t)] && modality[size_t(t)] == 1);
    }
    Selection text_experts = {1, 1, 0, 0}, image_experts = {0, 0, 1, 1};
    for (bool use_topk : {false, true}) {
      INFO("k " << k << " use_topk " << use_topk);
      auto options = all_losses(true, use_topk);
      BalanceLosses out = balance_losses(r, torch::tensor(modality), bools(valid), options);
      auto mean2 = [&](const std::function<double(const Selection&, const Selection&)>& f) {
        return 0.5 * (f(text_tokens, text_experts) + f(image_tokens, image_experts));
      };
      double expected_switch = mean2([&](auto& m, auto& e) { return ref_switch_aux(h, m, e, use_topk); });
      double expected_importance = mean2([&](auto& m, auto& e) { return ref_importance(h, m, e); });
      double expected_load = mean2([&](auto& m, auto& e) { return ref_load(h, m, e); });
      double expected_z = mean2([&](auto& m, auto& e) { return ref_z_loss(h, m, e); });
      double expected_sq_dev = mean2([&](auto& m, auto& e) { return ref_sq_dev(h, m, e); });
      CHECK(value(out.terms.at("switch_aux")) == Approx(expected_switch).epsilon(1e-5));
      CHECK(value(out.terms.at("importance")) == Approx(expected_importance).epsilon(1e-5).margin(1e-6));
      CHECK(value(out.terms.at("load")) == Approx(expected_load).epsilon(1e-5).margin(1e-6));
      CHECK(value(out.terms.at("z_loss")) == Approx(expected_z).epsilon(1e-5));
      CHECK(value(out.terms.at("sq_dev")) == Approx(expected_sq_dev).epsilon(1e-5).margin(1e-7));
      CHECK(value(out.total) == Approx(0.01 * expected_switch + 0.02 * expected_importance + 0.03 * expected_load +
                                       0.001 * expected_z + 0.5 * expected_sq_dev)
                                    .epsilon(1e-5));
    }
    // Only text tokens valid: the mean is over the one modality present (the image group does not count as 0).
    std::vector<int64_t> text_only(size_t(n), 0);
    for (int64_t t = 0; t < n; ++t) text_only[size_t(t)] = text_tokens[size_t(t)];
    BalanceLosses out = balance_losses(r, torch::tensor(modality), bools(text_only), all_losses(true));
    CHECK(value(out.terms.at("switch_aux")) == Approx(ref_switch_aux(h, text_tokens, text_experts, false)).epsilon(1e-5));
    CHECK(value(out.terms.at("z_loss")) == Approx(ref_z_loss(h, text_tokens, text_experts)).epsilon(1e-5));
  }

  // Three modalities present (a third modality allowed every expert): the mean is over three.
  std::vector<int64_t> modality3 = {0, 1, 2, 2, 1, 0, 2, 0};
  int64_t n3 = int64_t(modality3.size());
  std::vector<char> allowed3;
  for (int64_t t = 0; t < n3; ++t)
    for (int i = 0; i < 4; ++i)
      allowed3.push_back(modality3[size_t(t)] == 2 || (modality3[size_t(t)] == 0) == (i < 2) ? 1 : 0);
  Routing r3 = random_routing(n3, 4, 1, 77, allowed3).to_routing();
  HandRouting h3 = hand_from(r3);
  double expected = 0;
  for (int64_t m = 0; m < 3; ++m) {
    Selection tokens;
    for (int64_t t = 0; t < n3; ++t) tokens.push_back(modality3[size_t(t)] == m);
    Selection experts = m == 2 ? Selection{1, 1, 1, 1} : (m == 0 ? Selection{1, 1, 0, 0} : Selection{0, 0, 1, 1});
    expected += ref_importance(h3, tokens, experts) / 3.0;
  }
  BalanceLossOptions importance_only;
  importance_only.importance = 1.0;
  importance_only.per_modality = true;
  BalanceLosses out3 = balance_losses(r3, torch::tensor(modality3), torch::ones({n3}, torch::kBool), importance_only);
  CHECK(out3.terms.size() == 1);
  CHECK(value(out3.terms.at("importance")) == Approx(expected).epsilon(1e-5));
  CHECK(value(out3.total) == Approx(expected).epsilon(1e-5));
}

TEST_CASE("balance losses are 0, not NaN, without valid tokens", "[unit][moe][balance]") {
  for (bool per_modality : {false, true}) {
    INFO("per_modality " << per_modality);
    Routing r = random_routing(5, 4, 2, 41).to_routing();
    r.probs = leaf(r.probs);
    r.gates = leaf(r.gates);
    r.logits = leaf(r.logits);
    BalanceLosses out = balance_losses(r, torch::zeros({5}, torch::kInt64), torch::zeros({5}, torch::kBool),
                                       all_losses(per_modality, true));
    REQUIRE(out.terms.size() == 5);
    for (const auto& [name, term] : out.terms) {
      INFO(name);
      CHECK(value(term) == 0.0);
    }
    CHECK(value(out.total) == 0.0);
    out.total.backward();
    for (auto* t : {&r.probs, &r.gates, &r.logits}) CHECK(torch::isfinite(t->grad()).all().item<bool>());

    // No tokens at all.
    Routing empty = hand_routing({}, 0, 4, 2).to_routing();
    BalanceLosses none = balance_losses(empty, torch::zeros({0}, torch::kInt64), torch::zeros({0}, torch::kBool),
                                        all_losses(per_modality));
    REQUIRE(none.terms.size() == 5);
    for (const auto& [name, term] : none.terms) CHECK(value(term) == 0.0);
    CHECK(value(none.total) == 0.0);
  }
  // The single-loss functions with an all-false mask.
  Routing r = random_routing(5, 4, 2, 42).to_routing();
  auto nothing = torch::zeros({5}, torch::kBool);
  CHECK(value(switch_aux_loss(r, nothing)) == 0.0);
  CHECK(value(switch_aux_loss(r, nothing, {}, true)) == 0.0);
  CHECK(value(importance_loss(r, nothing)) == 0.0);
  CHECK(value(load_loss(r, nothing)) == 0.0);
  CHECK(value(z_loss(r, nothing)) == 0.0);
  CHECK(value(sq_dev_loss(r, nothing)) == 0.0);
}

TEST_CASE("balance_losses reports only the losses that are on", "[unit][moe][balance]") {
  Routing r = random_routing(6, 3, 1, 51).to_routing();
  auto modality = torch::zeros({6}, torch::kInt64);
  auto valid = torch::ones({6}, torch::kBool);
  BalanceLosses off = balance_losses(r, modality, valid, BalanceLossOptions{});
  CHECK(off.terms.empty());
  REQUIRE(off.total.defined());
  CHECK(off.total.dim() == 0);
  CHECK(value(off.total) == 0.0);
  BalanceLossOptions z_only;
  z_only.z_loss = 1e-3;
  BalanceLosses z = balance_losses(r, modality, valid, z_only);
  REQUIRE(z.terms.size() == 1);
  CHECK(value(z.total) == Approx(1e-3 * value(z.terms.at("z_loss"))).epsilon(1e-6));
}

TEST_CASE("balance loss options read and write JSON", "[unit][moe][balance]") {
  BalanceLossOptions defaults;
  CHECK_FALSE(defaults.any());
  BalanceLossOptions o = all_losses(true, true);
  CHECK(o.any());
  BalanceLossOptions back = read_fields<BalanceLossOptions>(write_fields(o), "test");
  CHECK(write_fields(back) == write_fields(o));
  CHECK(back.switch_aux == 0.01);
  CHECK(back.per_modality);
  CHECK(back.switch_use_topk);

  BalanceLossOptions partial = read_fields<BalanceLossOptions>(nlohmann::json{{"z_loss", 0.001}}, "test");
  CHECK(partial.z_loss == 0.001);
  CHECK(partial.switch_aux == 0.0);
  CHECK(partial.any());

  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(read_fields<BalanceLossOptions>(nlohmann::json{{"z_los", 0.001}}, "mole.json:losses"),
                    Contains("mole.json:losses") && Contains("z_los"));
  CHECK_THROWS_WITH(read_fields<BalanceLossOptions>(nlohmann::json{{"load", -1.0}}, "cfg"), Contains("load"));
  CHECK_THROWS_AS(read_fields<BalanceLossOptions>(nlohmann::json{{"load", "a lot"}}, "cfg"), ConfigError);
  CHECK_THROWS_AS(read_fields<BalanceLossOptions>(nlohmann::json::array(), "cfg"), ConfigError);
}
