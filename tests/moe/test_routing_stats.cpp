// Routing statistics (moe/routing_stats.h) against hand-written loops over tokens: counts, shares, mean gate
// weights and entropies per layer, phase and modality; phases kept apart; merge equals recording everything in
// one; reset; the JSON layout; the compact summary. Routings are made by hand (tests/moe/hand_routing.h).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "moe/routing_stats.h"
#include "tests/moe/hand_routing.h"

using namespace mole;
using namespace mole::test;  // hand-made routings (tests/moe/hand_routing.h)
using json = nlohmann::json;

namespace {

// One routing decision as the test records it.
struct Batch {
  Routing routing;
  std::vector<int64_t> modality;
  std::vector<int64_t> valid;
  RoutePhase phase = RoutePhase::kPrefill;
};

// A random batch of n tokens; padding rows (valid 0) hold garbage a router might leave there: NaN probabilities
// and weights, an out-of-range expert index.
Batch random_batch(int64_t n, int64_t e, int64_t k, uint64_t seed, const std::vector<int64_t>& modality,
                   const std::vector<int64_t>& valid, RoutePhase phase = RoutePhase::kPrefill,
                   const std::vector<char>& allowed = {}) {
  Batch b;
  b.routing = hand_routing(random_normal(n * e, seed, 1.5), n, e, k, allowed).to_routing();
  b.modality = modality;
  b.valid = valid;
  b.phase = phase;
  for (int64_t t = 0; t < n; ++t) {
    if (valid[size_t(t)]) continue;
    b.routing.probs[t].fill_(NAN);
    b.routing.topk_weight[t].fill_(NAN);
    b.routing.topk_index[t].fill_(99);
  }
  return b;
}

void record(RoutingStats& stats, const std::string& layer, const Batch& b) {
  stats.record(layer, b.routing, torch::tensor(b.modality), bools(b.valid), b.phase);
}

// The statistics of one (phase, modality) cell, as loops.
struct RefCell {
  double tokens = 0, entropy = 0;
  std::vector<double> top1, topk, gate;
  std::vector<int64_t> allowed;  // experts some token was allowed
};

RefCell ref_cell(const std::vector<Batch>& batches, RoutePhase phase, int64_t modality) {
  RefCell c;
  for (const auto& b : batches) {
    if (b.phase != phase) continue;
    HandRouting h = hand_from(b.routing);
    if (c.top1.empty()) c.top1.assign(size_t(h.e), 0), c.topk.assign(size_t(h.e), 0), c.gate.assign(size_t(h.e), 0);
    std::vector<char> allowed(size_t(h.e), 0);
    for (int64_t i : c.allowed) allowed[size_t(i)] = 1;
    for (int64_t t = 0; t < h.n; ++t) {
      if (!b.valid[size_t(t)] || b.modality[size_t(t)] != modality) continue;
      c.tokens += 1;
      c.top1[size_t(h.index(t, 0))] += 1;
      for (int64_t s = 0; s < h.k; ++s) {
        c.topk[size_t(h.index(t, s))] += 1;
        c.gate[size_t(h.index(t, s))] += h.weight(t, s);
      }
      for (int64_t i = 0; i < h.e; ++i) {
        double p = h.prob(t, i);
        if (p > 0) c.entropy -= p * std::log(p);  // 0 log 0 = 0
        if (h.is_allowed(t, i)) allowed[size_t(i)] = 1;
      }
    }
    c.allowed.clear();
    for (int64_t i = 0; i < h.e; ++i)
      if (allowed[size_t(i)]) c.allowed.push_back(i);
  }
  return c;
}

void check_cell(const json& cell, const RefCell& ref, int64_t top_k) {
  REQUIRE(ref.tokens > 0);
  CHECK(cell.at("tokens").get<int64_t>() == int64_t(ref.tokens));
  size_t e = ref.top1.size();
  for (const char* key : {"top1", "topk", "top1_share", "topk_share", "mean_gate"}) REQUIRE(cell.at(key).size() == e);
  for (size_t i = 0; i < e; ++i) {
    INFO("expert " << i);
    CHECK(cell["top1"][i].get<int64_t>() == int64_t(ref.top1[i]));
    CHECK(cell["topk"][i].get<int64_t>() == int64_t(ref.topk[i]));
    CHECK(cell["top1_share"][i].get<double>() == Approx(ref.top1[i] / ref.tokens).epsilon(1e-12));
    CHECK(cell["topk_share"][i].get<double>() == Approx(ref.topk[i] / (ref.tokens * double(top_k))).epsilon(1e-12));
    double mean_gate = ref.topk[i] > 0 ? ref.gate[i] / ref.topk[i] : 0.0;
    CHECK(cell["mean_gate"][i].get<double>() == Approx(mean_gate).epsilon(1e-9).margin(1e-12));
  }
  CHECK(cell.at("entropy").get<double>() == Approx(ref.entropy / ref.tokens).epsilon(1e-9));
  CHECK(cell.at("allowed_experts").get<std::vector<int64_t>>() == ref.allowed);
}

// Numbers equal to ~1e-12 relative, everything else exactly.
bool json_close(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) {
    double x = a.get<double>(), y = b.get<double>();
    return std::abs(x - y) <= 1e-12 * std::max({1.0, std::abs(x), std::abs(y)});
  }
  if (a.type() != b.type() || a.size() != b.size()) return false;
  if (a.is_object()) {
    for (const auto& [key, value] : a.items())
      if (!b.contains(key) || !json_close(value, b[key])) return false;
    return true;
  }
  if (a.is_array()) {
    for (size_t i = 0; i < a.size(); ++i)
      if (!json_close(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}

std::vector<int64_t> repeat_pattern(const std::vector<int64_t>& pattern, int64_t n) {
  std::vector<int64_t> out;
  for (int64_t t = 0; t < n; ++t) out.push_back(pattern[size_t(t) % pattern.size()]);
  return out;
}

}  // namespace

TEST_CASE("routing stats count top-1, top-k, gate weights and entropy like hand loops", "[unit][moe][stats]") {
  // Two decisions of one layer: 13 tokens with text, image and a modality the stats do not know (2), and
  // padding; then 7 more tokens. E=5, K=2.
  std::vector<Batch> batches = {
      random_batch(13, 5, 2, 1, {0, 1, 1, 0, 2, 1, 0, 0, 1, 1, 0, 2, 1}, {1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0}),
      random_batch(7, 5, 2, 2, {1, 1, 0, 0, 1, 0, 1}, {1, 1, 1, 1, 1, 1, 1})};
  batches[1].routing.probs.requires_grad_(true);  // a routing still in the graph: recorded detached
  RoutingStats stats;  // text and image
  for (const auto& b : batches) record(stats, "layers.0.mlp", b);
  json j = stats.to_json();
  const json& layer = j.at("layers").at("layers.0.mlp");
  CHECK(layer.at("n_experts") == 5);
  CHECK(layer.at("top_k") == 2);
  CHECK(layer.at("tokens_outside_modalities") == 2);  // the two valid tokens of modality 2
  CHECK_FALSE(layer.contains("generate"));
  for (int64_t m : {0, 1}) {
    INFO("modality " << m);
    check_cell(layer.at("prefill").at(modality_name(m)), ref_cell(batches, RoutePhase::kPrefill, m), 2);
  }
  // A token's top-k slots cover k distinct experts: the top-k shares of a cell sum to 1, the top-1 shares too.
  for (const char* key : {"top1_share", "topk_share"}) {
    double sum = 0;
    for (const auto& v : layer["prefill"]["text"][key]) sum += v.get<double>();
    CHECK(sum == Approx(1.0).epsilon(1e-12));
  }
}

TEST_CASE("routing stats keep prefill and generated tokens apart", "[unit][moe][stats]") {
  std::vector<Batch> batches = {
      random_batch(9, 4, 2, 11, {1, 1, 1, 0, 0, 0, 0, 1, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 0}, RoutePhase::kPrefill),
      random_batch(3, 4, 2, 12, {0, 0, 0}, {1, 1, 0}, RoutePhase::kGenerate),
      random_batch(3, 4, 2, 13, {0, 0, 0}, {1, 1, 1}, RoutePhase::kGenerate)};
  RoutingStats stats;
  for (const auto& b : batches) record(stats, "l", b);
  json layer = stats.to_json()["layers"]["l"];
  for (int64_t m : {0, 1}) check_cell(layer["prefill"][modality_name(m)], ref_cell(batches, RoutePhase::kPrefill, m), 2);
  // Generated tokens are text only: the image cell is left out, not written as zeros.
  REQUIRE(layer.contains("generate"));
  CHECK(layer["generate"].size() == 1);
  check_cell(layer["generate"]["text"], ref_cell(batches, RoutePhase::kGenerate, 0), 2);
  CHECK(layer["generate"]["text"]["tokens"] == 5);
  CHECK(layer["prefill"]["text"]["tokens"] == 4);
}

TEST_CASE("routing stats merge equals recording everything in one, and reset forgets", "[unit][moe][stats]") {
  auto mod = [](int64_t n) { return repeat_pattern({0, 1, 1}, n); };
  auto all = [](int64_t n) { return std::vector<int64_t>(size_t(n), 1); };
  Batch a = random_batch(8, 3, 1, 21, mod(8), all(8));
  Batch b = random_batch(5, 3, 1, 22, mod(5), repeat_pattern({1, 0}, 5));
  Batch c = random_batch(6, 3, 1, 23, mod(6), all(6), RoutePhase::kGenerate);
  Batch d = random_batch(4, 6, 2, 24, mod(4), all(4));

  RoutingStats one;
  record(one, "l0", a);
  record(one, "l1", b);
  record(one, "l1", c);
  record(one, "l2", d);

  RoutingStats first, second;
  record(first, "l0", a);
  record(first, "l1", b);
  record(second, "l1", c);
  record(second, "l2", d);
  RoutingStats merged = first;  // a copy: recording or merging into it leaves `first` as it was
  merged.merge(second);
  CHECK(merged.layers() == std::vector<std::string>{"l0", "l1", "l2"});
  CHECK(json_close(merged.to_json(), one.to_json()));
  CHECK(json_close(merged.table().summary_json(), one.table().summary_json()));
  CHECK(first.layers() == std::vector<std::string>{"l0", "l1"});
  CHECK_FALSE(first.to_json()["layers"]["l1"].contains("generate"));

  // Merging an empty one changes nothing; merging into an empty one copies.
  RoutingStats empty;
  merged.merge(empty);
  CHECK(json_close(merged.to_json(), one.to_json()));
  RoutingStats copy;
  copy.merge(one);
  CHECK(json_close(copy.to_json(), one.to_json()));
  record(copy, "l0", a);  // does not reach `one`
  CHECK(one.to_json()["layers"]["l0"]["prefill"]["text"]["tokens"] == 3);
  CHECK(copy.to_json()["layers"]["l0"]["prefill"]["text"]["tokens"] == 6);

  // Mismatches are refused.
  RoutingStats three_modalities(3);
  CHECK_THROWS(merged.merge(three_modalities));
  RoutingStats other_experts;
  record(other_experts, "l0", d);  // l0 has 3 experts in `merged`, 6 here
  CHECK_THROWS(merged.merge(other_experts));
  CHECK_THROWS(record(merged, "l0", d));

  merged.reset();
  CHECK(merged.layers().empty());
  CHECK(merged.to_json()["layers"].empty());
  CHECK(merged.table().summary_json()["layers"] == 0);
  CHECK(merged.table().summary() == "no routing recorded");
  record(merged, "l0", d);  // a layer may come back with another shape after a reset
  CHECK(merged.to_json()["layers"]["l0"]["n_experts"] == 6);
}

TEST_CASE("routing stats JSON layout: names, order, omitted cells", "[unit][moe][stats]") {
  RoutingStats stats(3);
  record(stats, "z.layer", random_batch(4, 3, 1, 31, {2, 2, 0, 2}, {1, 1, 1, 0}));
  record(stats, "a.layer", random_batch(3, 3, 1, 32, {1, 1, 1}, {1, 1, 1}, RoutePhase::kGenerate));
  record(stats, "m.layer", random_batch(2, 3, 1, 33, {0, 1}, {0, 0}));  // nothing valid
  json j = stats.to_json();
  CHECK(j["n_modalities"] == 3);
  CHECK(j["modality_names"] == json({"text", "image", "modality_2"}));
  CHECK(j["layer_order"] == json({"z.layer", "a.layer", "m.layer"}));
  CHECK(stats.layers() == std::vector<std::string>{"z.layer", "a.layer", "m.layer"});
  CHECK(j["layers"].size() == 3);
  const json& z = j["layers"]["z.layer"];
  CHECK(z["prefill"].size() == 2);
  CHECK(z["prefill"]["modality_2"]["tokens"] == 2);
  CHECK(z["prefill"]["text"]["tokens"] == 1);
  CHECK_FALSE(z.contains("generate"));
  CHECK_FALSE(z.contains("tokens_outside_modalities"));
  const json& a = j["layers"]["a.layer"];
  CHECK_FALSE(a.contains("prefill"));
  CHECK(a["generate"].size() == 1);
  CHECK(a["generate"]["image"]["tokens"] == 3);
  for (const char* key : {"tokens", "top1", "topk", "top1_share", "topk_share", "mean_gate", "entropy", "allowed_experts"})
    CHECK(a["generate"]["image"].contains(key));
  const json& m = j["layers"]["m.layer"];
  CHECK(m["n_experts"] == 3);
  CHECK_FALSE(m.contains("prefill"));
  CHECK_FALSE(m.contains("generate"));
  CHECK(modality_name(0) == "text");
  CHECK(modality_name(1) == "image");
  CHECK(modality_name(3) == "modality_3");
  CHECK(route_phase_name(RoutePhase::kGenerate) == "generate");

  // Bad shapes are refused with the layer's name.
  Batch b = random_batch(4, 3, 1, 34, {0, 0, 0, 0}, {1, 1, 1, 1});
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(stats.record("x", b.routing, torch::zeros({3}, torch::kInt64), bools({1, 1, 1, 1})),
                    Contains("x") && Contains("modality"));
  CHECK_THROWS_WITH(stats.record("x", b.routing, torch::zeros({4}, torch::kInt64), torch::ones({4})),
                    Contains("valid"));
}

TEST_CASE("routing stats summary: busiest-expert share, entropy and load CV^2 per modality", "[unit][moe][stats]") {
  // 4 experts: 0-1 text, 2-3 image (modality_grouped). Two layers, prefill and generate; the summary takes both
  // phases together and averages over the layers.
  std::vector<int64_t> modality = {0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0};
  int64_t n = int64_t(modality.size());
  std::vector<char> allowed;
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < 4; ++i) allowed.push_back((modality[size_t(t)] == 0) == (i < 2) ? 1 : 0);
  std::vector<int64_t> valid(size_t(n), 1);
  valid[4] = 0;
  std::map<std::string, std::vector<Batch>> layers = {
      {"l0", {random_batch(n, 4, 1, 41, modality, valid, RoutePhase::kPrefill, allowed),
              random_batch(n, 4, 1, 42, modality, valid, RoutePhase::kGenerate, allowed)}},
      {"l1", {random_batch(n, 4, 1, 43, modality, valid, RoutePhase::kPrefill, allowed)}}};
  RoutingStats stats;
  for (const auto& [name, batches] : layers)
    for (const auto& b : batches) record(stats, name, b);

  json s = stats.table().summary_json();
  CHECK(s["layers"] == 2);
  std::string line;
  for (int64_t m : {0, 1}) {
    double max_share = 0, entropy = 0, cv2 = 0;
    for (const auto& [name, batches] : layers) {
      RefCell both = ref_cell(batches, RoutePhase::kPrefill, m);
      RefCell generate = ref_cell(batches, RoutePhase::kGenerate, m);
      for (size_t i = 0; i < 4 && generate.tokens > 0; ++i) {
        both.top1[i] += generate.top1[i];
        both.topk[i] += generate.topk[i];
      }
      both.entropy += generate.entropy;
      both.tokens += generate.tokens;
      double busiest = 0;
      for (double c : both.top1) busiest = std::max(busiest, c);
      max_share += busiest / both.tokens / 2;
      entropy += both.entropy / both.tokens / 2;
      // CV^2 over the modality's two experts: unbiased var of (a, b) = (a-b)^2 / 2, mean (a+b)/2.
      double a = both.topk[size_t(2 * m)], b = both.topk[size_t(2 * m + 1)];
      cv2 += ((a - b) * (a - b) / 2) / ((a + b) * (a + b) / 4 + 1e-10) / 2;
    }
    INFO("modality " << m);
    const json& cell = s.at(modality_name(m));
    CHECK(cell["max_share"].get<double>() == Approx(max_share).epsilon(1e-10));
    CHECK(cell["entropy"].get<double>() == Approx(entropy).epsilon(1e-9));
    CHECK(cell["load_cv2"].get<double>() == Approx(cv2).epsilon(1e-10));
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%s: max-share %.2f H %.2f cv2 %.2f", modality_name(m).c_str(), max_share,
                  entropy, cv2);
    line += (line.empty() ? "" : " | ") + std::string(buf);
  }
  CHECK(stats.table().summary() == line);
  // Top-1 routing over 2 allowed experts: the busiest takes at least half, entropy at most log 2.
  CHECK(s["text"]["max_share"].get<double>() >= 0.5);
  CHECK(s["image"]["entropy"].get<double>() <= std::log(2.0) + 1e-12);
}
