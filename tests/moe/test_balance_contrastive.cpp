// The contrastive expert loss (moe/balance.h contrastive_loss; docs/MOE.md "Balance and stability losses") in both
// forms: literal hand-computed numbers on unit vectors at chosen angles, an independent per-token loop in float64
// (the definitions written out, centroids summed token by token), per-modality groups with modality_grouped
// `allowed` rows, padding, its gradient against central finite differences of the loop, nothing computed while
// off, and the term a MoLE FFN and a linear-level layer hand to the loss sink.
// Kept apart from test_balance.cpp, which is near the size where a file should be split (docs STYLE 1).
//
// N=tokens E=experts K=top-k P=width of an expert's projection
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "core/json_config.h"
#include "language/llama_decoder.h"
#include "moe/balance.h"
#include "moe/mole_ffn.h"
#include "moe/mole_linear.h"
#include "moe/routing_context.h"
#include "tests/moe/hand_routing.h"
#include "tests/test_util.h"

using namespace mole;
using namespace mole::test;  // hand-made routings (tests/moe/hand_routing.h)

namespace {

using Selection = std::vector<char>;  // a 0/1 list; empty = all
bool selected(const Selection& s, int64_t i) { return s.empty() || s[size_t(i)] != 0; }

// Every expert's projection for every token, (N, E, P) row-major, as plain doubles.
struct Projections {
  int64_t n = 0, e = 0, p = 0;
  std::vector<double> v;
  std::vector<double> at(int64_t t, int64_t i) const {
    auto begin = v.begin() + (t * e + i) * p;
    return std::vector<double>(begin, begin + p);
  }
  torch::Tensor tensor(torch::ScalarType dtype = torch::kFloat64) const {
    return torch::tensor(v, torch::kFloat64).view({n, e, p}).to(dtype);
  }
};

std::vector<double> unit(std::vector<double> a) {
  double norm = 0;
  for (double x : a) norm += x * x;
  norm = std::sqrt(norm);
  for (double& x : a) x = norm > 0 ? x / norm : 0.0;
  return a;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t c = 0; c < a.size(); ++c) s += a[c] * b[c];
  return s;
}

// The contrastive loss as the definitions read, token by token. `contributing` gets the number of tokens that
// gave a term (all considered tokens for top-k >= 2; those whose top-1 expert has another token for top-1).
double ref_contrastive(const HandRouting& h, const Projections& x, const Selection& mask, const Selection& experts,
                       double tau, int* contributing = nullptr) {
  auto o = [&](int64_t t, int64_t i) { return unit(x.at(t, i)); };
  auto sim = [&](const std::vector<double>& a, const std::vector<double>& b) { return dot(a, b) / tau; };
  auto chosen = [&](int64_t t, int64_t m) {
    for (int64_t s = 0; s < h.k; ++s)
      if (h.index(t, s) == m) return true;
    return false;
  };
  // The negatives of anchor i on token t: the other experts the token may use and the set considers, and the
  // token's other chosen experts.
  auto negative = [&](int64_t t, int64_t i, int64_t m) {
    return m != i && ((h.is_allowed(t, m) && selected(experts, m)) || chosen(t, m));
  };
  double total = 0;
  int count = 0;
  for (int64_t t = 0; t < h.n; ++t) {
    if (!selected(mask, t)) continue;
    if (h.k >= 2) {
      double sum = 0;
      for (int64_t a = 0; a < h.k; ++a)
        for (int64_t b = 0; b < h.k; ++b) {
          if (a == b) continue;
          int64_t i = h.index(t, a), j = h.index(t, b);
          double denominator = 0;
          for (int64_t m = 0; m < h.e; ++m)
            if (negative(t, i, m)) denominator += std::exp(sim(o(t, i), o(t, m)));
          sum += -std::log(std::exp(sim(o(t, i), o(t, j))) / denominator);
        }
      total += sum / double(h.k * (h.k - 1));
      count += 1;
    } else {
      int64_t i = h.index(t, 0);
      std::vector<double> centroid(size_t(x.p), 0.0);
      int others = 0;
      for (int64_t s = 0; s < h.n; ++s) {
        if (s == t || !selected(mask, s) || h.index(s, 0) != i) continue;
        auto os = o(s, i);
        for (int64_t c = 0; c < x.p; ++c) centroid[size_t(c)] += os[size_t(c)];
        others += 1;
      }
      if (others == 0) continue;  // no positive
      double positive = std::exp(sim(o(t, i), unit(centroid))), denominator = positive;
      for (int64_t m = 0; m < h.e; ++m)
        if (negative(t, i, m)) denominator += std::exp(sim(o(t, i), o(t, m)));
      total += -std::log(positive / denominator);
      count += 1;
    }
  }
  if (contributing) *contributing = count;
  return count ? total / count : 0.0;
}

// The per-modality form from the loop: each modality present among the valid tokens over its own tokens and the
// allowed row of its first token, averaged over the modalities where some token contributed.
double ref_per_modality(const HandRouting& h, const Projections& x, const std::vector<int64_t>& modality,
                        const std::vector<int64_t>& valid, double tau) {
  double sum = 0;
  int groups = 0;
  for (int64_t m = 0; m < kMaxModalities; ++m) {
    Selection tokens, experts;
    int64_t first = -1;
    for (int64_t t = 0; t < h.n; ++t) {
      bool in = valid[size_t(t)] && modality[size_t(t)] == m;
      tokens.push_back(in);
      if (in && first < 0) first = t;
    }
    if (first < 0) continue;
    for (int64_t i = 0; i < h.e; ++i) experts.push_back(h.is_allowed(first, i));
    int contributing = 0;
    double loss = ref_contrastive(h, x, tokens, experts, tau, &contributing);
    if (contributing > 0) sum += loss, groups += 1;
  }
  return groups ? sum / groups : 0.0;
}

Projections random_projections(int64_t n, int64_t e, int64_t p, uint64_t seed) {
  return {n, e, p, random_normal(n * e * p, seed)};
}

// A routing with the given chosen experts per token, best first (logits descending in that order), through the
// hand router so every field is consistent.
HandRouting chosen_routing(const std::vector<std::vector<int64_t>>& chosen, int64_t e,
                           const std::vector<char>& allowed = {}) {
  int64_t n = int64_t(chosen.size()), k = int64_t(chosen[0].size());
  std::vector<double> logits(size_t(n * e), -5.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t s = 0; s < k; ++s) logits[size_t(t * e + chosen[size_t(t)][size_t(s)])] = 3.0 - double(s);
  return hand_routing(logits, n, e, k, allowed);
}

// (cos a, sin a) * length, a in degrees: unit vectors at chosen angles make every cosine known.
std::vector<double> at_angle(double degrees, double length = 1.0) {
  double a = degrees * M_PI / 180.0;
  return {length * std::cos(a), length * std::sin(a)};
}

Projections from_angles(const std::vector<std::vector<double>>& degrees) {  // [token][expert], P = 2
  Projections x{int64_t(degrees.size()), int64_t(degrees[0].size()), 2, {}};
  for (const auto& row : degrees)
    for (size_t i = 0; i < row.size(); ++i) {
      auto v = at_angle(row[i], 0.5 + double(i));  // lengths differ: only directions count
      x.v.insert(x.v.end(), v.begin(), v.end());
    }
  return x;
}

double value(const torch::Tensor& t) { return t.item<double>(); }

BalanceLossOptions contrastive_only(double coefficient, double tau, bool per_modality = false) {
  BalanceLossOptions o;
  o.contrastive = coefficient;
  o.contrastive_tau = tau;
  o.per_modality = per_modality;
  return o;
}

// The allowed rows of modality_grouped routing with text experts 0-1, image experts 2-3 and a shared expert 4.
std::vector<char> grouped_allowed(const std::vector<int64_t>& modality) {
  std::vector<char> allowed;
  for (int64_t m : modality)
    for (int64_t i = 0; i < 5; ++i) allowed.push_back(i == 4 || (m == 0) == (i < 2) ? 1 : 0);
  return allowed;
}

// Random B (LoRA starts with B = 0) and router, float64 factors and a float32 router, as test_mole_layers.
void randomize(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters()) p.value().normal_(0.0, 0.3);
}

}  // namespace

TEST_CASE("contrastive balance loss equals hand-computed numbers in both forms", "[unit][moe][balance]") {
  const double tau = 0.5;  // sim = 2 cos
  SECTION("top-2: the other chosen expert is the positive") {
    // token 0 chooses {0, 1}; its experts point at 0, 90, 180 degrees: cos01 = 0, cos02 = -1, cos12 = 0
    //   anchor 0, positive 1: -log(e^0 / (e^0 + e^-2)) = log(1 + e^-2)
    //   anchor 1, positive 0: -log(e^0 / (e^0 + e^0))  = log 2
    // token 1 chooses {2, 0} (best first); at 0, 60, 120 degrees: sim02 = -1, sim01 = sim12 = 1
    //   anchor 2, positive 0: 1 + log(e^-1 + e^1);  anchor 0, positive 2: the same
    HandRouting h = chosen_routing({{0, 1}, {2, 0}}, 3);
    Projections x = from_angles({{0, 90, 180}, {0, 60, 120}});
    double token0 = 0.5 * (std::log(1 + std::exp(-2.0)) + std::log(2.0));
    double token1 = 1 + std::log(std::exp(-1.0) + std::exp(1.0));
    CHECK(value(contrastive_loss(h.to_routing(torch::kFloat64), x.tensor(), {}, tau)) ==
          Approx(0.5 * (token0 + token1)).epsilon(1e-12));
    // Expert 1 not allowed for token 1: it is no negative, each anchor's only other expert is the positive, 0.
    std::vector<char> allowed = {1, 1, 1, 1, 0, 1};
    HandRouting masked = chosen_routing({{0, 1}, {2, 0}}, 3, allowed);
    CHECK(value(contrastive_loss(masked.to_routing(torch::kFloat64), x.tensor(), {}, tau)) ==
          Approx(0.5 * token0).epsilon(1e-12));
    // Only token 1 considered; and expert 1 outside the experts considered (same effect as not allowed).
    CHECK(value(contrastive_loss(h.to_routing(torch::kFloat64), x.tensor(), bools({0, 1}), tau)) ==
          Approx(token1).epsilon(1e-12));
    CHECK(value(contrastive_loss(h.to_routing(torch::kFloat64), x.tensor(), bools({0, 1}), tau, bools({1, 0, 1}))) ==
          Approx(0.0).margin(1e-12));
  }
  SECTION("top-1: the centroid of the same expert on the other tokens is the positive") {
    // 5 tokens, 2 experts, top-1 = 0, 0, 1, 0, 1. Expert 0 on tokens 0, 1, 3 points at 0, 45, 90 degrees, so each
    // token's positive (the normalised sum of the other two) is their bisector: 67.5, 45, 22.5 degrees, and
    // cos(o_t0, p) = cos 67.5, 1, cos 67.5. Expert 1 on those tokens (the negative) points at 90, 225, 90:
    // cos = 0, -1, 1. Tokens 2 and 4 share expert 1 (at 0 and 180 degrees, centroid of the other = the other):
    // cos(o, p) = -1 each, negatives (expert 0) at 30 and 210 degrees: cos 30 and cos(210 - 180) = cos 30.
    HandRouting h = chosen_routing({{0}, {0}, {1}, {0}, {1}}, 2);
    Projections x = from_angles({{0, 90}, {45, 225}, {30, 0}, {90, 90}, {210, 180}});
    const double c = std::cos(67.5 * M_PI / 180), c30 = std::cos(30 * M_PI / 180);
    auto term = [&](double positive_cos, double negative_cos) {  // -log(e^p / (e^p + e^n)) = log(1 + e^(n - p))
      return std::log(1 + std::exp((negative_cos - positive_cos) / tau));
    };
    double expected = (term(c, 0) + term(1, -1) + term(-1, c30) + term(c, 1) + term(-1, c30)) / 5;
    CHECK(value(contrastive_loss(h.to_routing(torch::kFloat64), x.tensor(), {}, tau)) ==
          Approx(expected).epsilon(1e-12));
    // Token 4 masked: token 2's expert has no other token, so it gives nothing; the mean is over 3 tokens, and
    // the centroids of tokens 0, 1, 3 are unchanged.
    CHECK(value(contrastive_loss(h.to_routing(torch::kFloat64), x.tensor(), bools({1, 1, 1, 1, 0}), tau)) ==
          Approx((term(c, 0) + term(1, -1) + term(c, 1)) / 3).epsilon(1e-12));
    // Token 3 masked too: tokens 0 and 1 are each other's positive (45 degrees apart).
    const double c45 = std::cos(45 * M_PI / 180);
    CHECK(value(contrastive_loss(h.to_routing(torch::kFloat64), x.tensor(), bools({1, 1, 1, 0, 0}), tau)) ==
          Approx((term(c45, 0) + term(c45, -1)) / 2).epsilon(1e-12));
  }
}

TEST_CASE("contrastive balance loss equals the per-token float64 loop for random routings", "[unit][moe][balance]") {
  const int64_t n = 11, e = 5, p = 3;
  // An allowed split (modality_grouped: experts 0-1 or 2-3, and shared 4) and none.
  std::vector<int64_t> modality = {0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0};
  for (bool split : {false, true}) {
    for (int64_t k : {1, 2, 3}) {
      INFO("top_k " << k << " split " << split);
      auto allowed = split ? grouped_allowed(modality) : std::vector<char>{};
      HandRouting h = hand_routing(random_normal(n * e, 40 + uint64_t(k), 1.5), n, e, k, allowed);
      Projections x = random_projections(n, e, p, 50 + uint64_t(k));
      Selection mask = {1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1}, experts = {1, 0, 1, 1, 1};
      for (double tau : {0.1, 0.7}) {
        for (bool use_selection : {false, true}) {
          INFO("tau " << tau << " selection " << use_selection);
          Selection m = use_selection ? mask : Selection(), ex = use_selection ? experts : Selection();
          double want = ref_contrastive(h, x, m, ex, tau);
          Routing r = h.to_routing(torch::kFloat64);
          auto got = contrastive_loss(r, x.tensor(), m.empty() ? torch::Tensor() : bools({m.begin(), m.end()}), tau,
                                      ex.empty() ? torch::Tensor() : bools({ex.begin(), ex.end()}));
          CHECK(got.scalar_type() == torch::kFloat64);
          CHECK(value(got) == Approx(want).epsilon(1e-12));
          // float32 routing: computed in float32
          auto got32 = contrastive_loss(h.to_routing(), x.tensor(torch::kFloat32), {}, tau);
          CHECK(got32.scalar_type() == torch::kFloat32);
          CHECK(value(got32) == Approx(ref_contrastive(h, x, {}, {}, tau)).epsilon(1e-5));
        }
      }
    }
  }
}

TEST_CASE("per-modality contrastive balance loss keeps centroids and negatives inside each modality",
          "[unit][moe][balance]") {
  // modality_grouped: text experts 0-1, image experts 2-3, shared 4; padding on tokens 4 and 9.
  std::vector<int64_t> modality = {0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0};
  std::vector<int64_t> valid = {1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1};
  const int64_t n = int64_t(modality.size()), e = 5, p = 4;
  auto allowed = grouped_allowed(modality);
  for (int64_t k : {1, 2}) {
    INFO("top_k " << k);
    // Tokens 0-3 (two text, two image) put the shared expert 4 first, so its centroid differs per modality.
    auto logits = random_normal(n * e, 60 + uint64_t(k), 1.5);
    for (int64_t t = 0; t < 4; ++t) logits[size_t(t * e + 4)] += 6.0;
    HandRouting h = hand_routing(logits, n, e, k, allowed);
    Projections x = random_projections(n, e, p, 70 + uint64_t(k));
    Routing r = h.to_routing(torch::kFloat64);
    double want = ref_per_modality(h, x, modality, valid, 0.2);
    BalanceLosses out = balance_losses(r, torch::tensor(modality), bools(valid), contrastive_only(0.3, 0.2, true),
                                       x.tensor());
    REQUIRE(out.terms.size() == 1);
    CHECK(value(out.terms.at("contrastive")) == Approx(want).epsilon(1e-12));
    CHECK(value(out.total) == Approx(0.3 * want).epsilon(1e-12));
    // Centroids are per modality: pooling the modalities gives another number (checked, so the test means something).
    Selection all_valid(valid.begin(), valid.end());
    CHECK(std::abs(ref_contrastive(h, x, all_valid, {}, 0.2) - want) > 1e-3);
    // Without per_modality: one group over every valid token, negatives still only the allowed experts.
    BalanceLosses pooled = balance_losses(r, torch::tensor(modality), bools(valid), contrastive_only(1.0, 0.2),
                                          x.tensor());
    CHECK(value(pooled.terms.at("contrastive")) == Approx(ref_contrastive(h, x, all_valid, {}, 0.2)).epsilon(1e-12));
  }
  // Top-1 with a modality where no expert has two tokens: that modality has no positive and stays out of the
  // mean (it does not count as 0); with no positive anywhere the term is 0.
  std::vector<int64_t> two_modalities = {0, 0, 0, 1, 1};
  HandRouting h = chosen_routing({{0}, {0}, {1}, {2}, {3}}, 5, grouped_allowed(two_modalities));
  Projections x = random_projections(5, 5, 3, 81);
  auto all = std::vector<int64_t>(5, 1);
  BalanceLosses out = balance_losses(h.to_routing(torch::kFloat64), torch::tensor(two_modalities), bools(all),
                                     contrastive_only(1.0, 0.1, true), x.tensor());
  CHECK(value(out.terms.at("contrastive")) ==
        Approx(ref_contrastive(h, x, Selection{1, 1, 1, 0, 0}, Selection{1, 1, 0, 0, 1}, 0.1)).epsilon(1e-12));
  CHECK(value(out.terms.at("contrastive")) > 0);
  HandRouting lonely = chosen_routing({{0}, {1}, {4}, {2}, {3}}, 5, grouped_allowed(two_modalities));
  BalanceLosses none = balance_losses(lonely.to_routing(torch::kFloat64), torch::tensor(two_modalities), bools(all),
                                      contrastive_only(1.0, 0.1, true), x.tensor());
  CHECK(value(none.terms.at("contrastive")) == 0.0);
}

TEST_CASE("contrastive balance loss ignores padding, is 0 not NaN without tokens, and costs nothing when off",
          "[unit][moe][balance]") {
  const int64_t e = 4, p = 3;
  std::vector<int64_t> is_real = {1, 0, 1, 1, 0, 1, 1, 0, 1};
  const int64_t n = int64_t(is_real.size());
  auto valid = bools(is_real);
  auto where_real = torch::nonzero(valid).view(-1);
  for (int64_t k : {1, 2}) {
    INFO("top_k " << k);
    HandRouting h = hand_routing(random_normal(6 * e, 90 + uint64_t(k), 1.5), 6, e, k);
    Routing small = h.to_routing(torch::kFloat64);
    auto proj_small = random_projections(6, e, p, 95).tensor().requires_grad_(true);
    // The same tokens with padding rows holding NaN projections, NaN logits and out-of-range expert indices.
    auto spread = [&](const torch::Tensor& t, double fill) {
      auto shape = t.sizes().vec();
      shape[0] = n;
      return torch::full(shape, fill, t.options()).index_copy(0, where_real, t);
    };
    Routing big = small;
    big.logits = spread(small.logits, NAN);
    big.probs = spread(small.probs, NAN);
    big.gates = spread(small.gates, NAN);
    big.topk_weight = spread(small.topk_weight, NAN);
    big.topk_index = spread(small.topk_index, 99);
    big.allowed = spread(small.allowed, 0);
    auto proj_big = spread(proj_small.detach(), NAN).requires_grad_(true);
    for (bool per_modality : {false, true}) {
      INFO("per_modality " << per_modality);
      auto a = balance_losses(small, torch::zeros({6}, torch::kInt64), torch::ones({6}, torch::kBool),
                              contrastive_only(1.0, 0.1, per_modality), proj_small);
      auto b = balance_losses(big, torch::zeros({n}, torch::kInt64), valid, contrastive_only(1.0, 0.1, per_modality),
                              proj_big);
      CHECK(value(b.terms.at("contrastive")) == Approx(value(a.terms.at("contrastive"))).epsilon(1e-12));
      auto ga = torch::autograd::grad({a.total}, {proj_small})[0];
      auto gb = torch::autograd::grad({b.total}, {proj_big})[0];
      CHECK(torch::isfinite(gb).all().item<bool>());
      CHECK(max_abs_diff(gb.index_select(0, where_real), ga) < 1e-12);
      CHECK(gb.index_select(0, torch::nonzero(~valid).view(-1)).abs().sum().item<double>() == 0.0);
    }
    // No valid token: 0 with a finite gradient.
    auto nothing = balance_losses(big, torch::zeros({n}, torch::kInt64), torch::zeros({n}, torch::kBool),
                                  contrastive_only(1.0, 0.1, true), proj_big);
    CHECK(value(nothing.terms.at("contrastive")) == 0.0);
    CHECK(torch::isfinite(torch::autograd::grad({nothing.total}, {proj_big})[0]).all().item<bool>());
    CHECK(value(contrastive_loss(big, proj_big, torch::zeros({n}, torch::kBool), 0.1)) == 0.0);
  }
  // Off (coefficient 0): no term, and no projections needed.
  Routing r = hand_routing(random_normal(5 * e, 99, 1.5), 5, e, 2).to_routing();
  auto modality = torch::zeros({5}, torch::kInt64);
  auto all = torch::ones({5}, torch::kBool);
  BalanceLossOptions z_only;
  z_only.z_loss = 1e-3;
  CHECK(balance_losses(r, modality, all, z_only).terms.count("contrastive") == 0);
  // On without projections: an error that names the loss.
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(balance_losses(r, modality, all, contrastive_only(0.1, 0.1)), Contains("contrastive"));
  CHECK_THROWS_WITH(contrastive_loss(r, torch::zeros({5, e + 1, 2}), {}, 0.1), Contains("projections"));

  // route_and_record asks the layer for its projections only when the loss is on and a loss sink is open.
  Router router(RouterOptions(6, e, RoutingOptions().top_k(2)));
  auto x = torch::randn({5, 6});
  int calls = 0;
  auto projections = [&] {
    ++calls;
    return torch::randn({5, e, 2});
  };
  LayerLosses losses;
  route_and_record(*router, x, "l", contrastive_only(0.1, 0.1), projections);  // no sink scope
  {
    RoutingSinkScope record(RoutingSinks{nullptr, &losses});
    route_and_record(*router, x, "l", z_only, projections);  // the loss is off
  }
  CHECK(calls == 0);
  {
    RoutingSinkScope record(RoutingSinks{nullptr, &losses});
    route_and_record(*router, x, "l", contrastive_only(0.1, 0.1), projections);
  }
  CHECK(calls == 1);
  REQUIRE(losses.size() == 2);
  CHECK(losses[1].second.terms.count("contrastive") == 1);
}

TEST_CASE("contrastive balance loss gradient matches finite differences of the float64 loop", "[unit][moe][balance]") {
  const int64_t n = 7, e = 4, p = 3;
  std::vector<int64_t> modality = {0, 1, 1, 0, 0, 1, 0};
  std::vector<char> allowed;
  for (int64_t m : modality)
    for (int64_t i = 0; i < e; ++i) allowed.push_back((m == 0) == (i < 2) || i == 3 ? 1 : 0);
  for (int64_t k : {1, 2}) {
    for (bool split : {false, true}) {
      INFO("top_k " << k << " split " << split);
      HandRouting h = hand_routing(random_normal(n * e, 110 + uint64_t(k), 1.5), n, e, k,
                                   split ? allowed : std::vector<char>{});
      Projections x = random_projections(n, e, p, 120 + uint64_t(k));
      Selection mask = {1, 1, 1, 0, 1, 1, 1};
      const double tau = 0.3;
      auto proj = x.tensor().requires_grad_(true);
      auto loss = contrastive_loss(h.to_routing(torch::kFloat64), proj, bools({mask.begin(), mask.end()}), tau);
      auto grad = torch::autograd::grad({loss}, {proj})[0].contiguous().view(-1);
      // central differences of the loop, eps 1e-6 (truncation ~1e-12 times the third derivative)
      const double eps = 1e-6;
      double worst = 0, largest = 0;
      for (size_t j = 0; j < x.v.size(); ++j) {
        double keep = x.v[j];
        x.v[j] = keep + eps;
        double up = ref_contrastive(h, x, mask, {}, tau);
        x.v[j] = keep - eps;
        double down = ref_contrastive(h, x, mask, {}, tau);
        x.v[j] = keep;
        double fd = (up - down) / (2 * eps);
        worst = std::max(worst, std::abs(grad[int64_t(j)].item<double>() - fd));
        largest = std::max(largest, std::abs(fd));
      }
      CHECK(largest > 1e-2);  // the check is not of zeros
      CHECK(worst < 1e-7);
    }
  }
}

TEST_CASE("a MoLE FFN layer and a linear-level one hand a contrastive balance term to the loss sink",
          "[unit][moe][balance]") {
  const int64_t n = 10, d = 6, f = 8, e = 4, r = 2;
  for (int64_t k : {1, 2}) {
    INFO("top_k " << k);
    torch::manual_seed(130 + k);
    TextConfig text;
    text.hidden_size = d;
    text.intermediate_size = f;
    LlamaMlp mlp(text);
    mlp->to(torch::kFloat64);
    BalanceLossOptions aux = contrastive_only(0.05, 0.1);
    auto options = MoleOptions().n_experts(e).rank(r).routing(RoutingOptions().top_k(k)).losses(aux);
    auto ffn = std::make_shared<MoleFfnImpl>(MoleFfnOptions(d, f, options).layer_name("test.mlp"));
    randomize(*ffn);
    ffn->to(torch::kFloat64);
    ffn->router->to(torch::kFloat32);
    mlp->attach(ffn);
    auto x = torch::randn({n, d}, torch::kFloat64).requires_grad_(true);
    LayerLosses losses;
    {
      RoutingSinkScope record(RoutingSinks{nullptr, &losses});
      mlp(x);
    }
    REQUIRE(losses.size() == 1);
    const BalanceLosses& layer = losses[0].second;
    REQUIRE(layer.terms.count("contrastive") == 1);
    auto term = layer.terms.at("contrastive");
    // It is the loss on [gate_A_i x; up_A_i x] for the layer's own routing.
    Routing routing = ffn->router->forward(x, torch::zeros({n}, torch::kInt64));
    auto projections = torch::cat({torch::einsum("nd,erd->ner", {x, ffn->gate_A}),
                                   torch::einsum("nd,erd->ner", {x, ffn->up_A})}, 2);  // (N, E, 2R)
    CHECK(value(term) == Approx(value(contrastive_loss(routing, projections, {}, 0.1))).epsilon(1e-10));
    CHECK(value(layer.total) == Approx(0.05 * value(term)).epsilon(1e-6));
    CHECK(value(term) > 0);
    // The gradient reaches both A factors and x, nothing else: not B, not the router (its choices are indices).
    term.backward();
    for (auto* a : {&ffn->gate_A, &ffn->up_A}) {
      REQUIRE(a->grad().defined());
      CHECK(a->grad().abs().sum().item<double>() > 0);
    }
    REQUIRE(x.grad().defined());
    CHECK(x.grad().abs().sum().item<double>() > 0);
    for (auto* b : {&ffn->gate_B, &ffn->up_B, &ffn->down_A, &ffn->down_B})
      CHECK((!b->grad().defined() || b->grad().abs().sum().item<double>() == 0));
    CHECK((!ffn->router->weight.grad().defined() || ffn->router->weight.grad().abs().sum().item<double>() == 0));

    // Linear level: the projections are A_i x; both the plain path (float64) and the fused CPU float32 one.
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      INFO("dtype " << dtype);
      Linear base(LinearOptions(d, 5));
      base->to(dtype);
      auto linear = std::make_shared<MoleLinearImpl>(MoleLinearOptions(d, 5, options).layer_name("test.q_proj"));
      randomize(*linear);
      linear->to(dtype);
      linear->router->to(torch::kFloat32);
      base->attach(linear);
      auto xl = torch::randn({n, d}, dtype);
      LayerLosses linear_losses;
      {
        RoutingSinkScope record(RoutingSinks{nullptr, &linear_losses});
        base(xl);
      }
      REQUIRE(linear_losses.size() == 1);
      auto linear_term = linear_losses[0].second.terms.at("contrastive");
      Routing linear_routing = linear->router->forward(xl, torch::zeros({n}, torch::kInt64));
      CHECK(value(linear_term) ==
            Approx(value(contrastive_loss(linear_routing, torch::einsum("nd,erd->ner", {xl, linear->lora_A}), {}, 0.1)))
                .epsilon(1e-5));
      linear_term.backward();
      REQUIRE(linear->lora_A.grad().defined());
      CHECK(linear->lora_A.grad().abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE("contrastive balance loss options read, write and refuse a temperature <= 0", "[unit][moe][balance]") {
  BalanceLossOptions defaults;
  CHECK(defaults.contrastive == 0.0);
  CHECK(defaults.contrastive_tau == 0.1);
  CHECK_FALSE(defaults.any());
  BalanceLossOptions on = read_fields<BalanceLossOptions>(nlohmann::json{{"contrastive", 0.02}}, "test");
  CHECK(on.any());
  CHECK(on.contrastive_tau == 0.1);
  BalanceLossOptions both =
      read_fields<BalanceLossOptions>(nlohmann::json{{"contrastive", 0.02}, {"contrastive_tau", 0.07}}, "test");
  CHECK(both.contrastive_tau == 0.07);
  CHECK(write_fields(read_fields<BalanceLossOptions>(write_fields(both), "test")) == write_fields(both));
  using Catch::Matchers::Contains;
  for (double tau : {0.0, -0.1})
    CHECK_THROWS_WITH(read_fields<BalanceLossOptions>(nlohmann::json{{"contrastive_tau", tau}}, "cfg"),
                      Contains("contrastive_tau"));
  CHECK_THROWS_WITH(read_fields<BalanceLossOptions>(nlohmann::json{{"contrastive", -1.0}}, "cfg"),
                    Contains("contrastive"));
}
