// Routing by task family (moe/routing_info.h): mutual information of hand tables against the formula written
// out, and routing_information over hand-made routings of two families and two modalities.
#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "moe/routing_info.h"
#include "tests/moe/hand_routing.h"

using namespace mole;
using namespace mole::test;

namespace {

// Tokens whose top-1 expert is experts[t] (a logit of 8 there, 0 elsewhere), with their modality.
void record_choices(RoutingStats& stats, const std::string& layer, const std::vector<int64_t>& experts,
                    const std::vector<int64_t>& modality, int64_t n_experts = 2) {
  const int64_t n = int64_t(experts.size());
  std::vector<double> logits(size_t(n * n_experts), 0.0);
  for (int64_t t = 0; t < n; ++t) logits[size_t(t * n_experts + experts[size_t(t)])] = 8.0;
  Routing r = hand_routing(logits, n, n_experts, 1).to_routing();
  stats.record(layer, r, torch::tensor(modality), bools(std::vector<int64_t>(size_t(n), 1)));
}

}  // namespace

TEST_CASE("mutual information of count tables equals the formula by hand", "[unit][moe][routing]") {
  CHECK(mutual_information({{10, 0}, {0, 10}}) == Approx(std::log(2.0)));  // the expert tells the group
  CHECK(mutual_information({{5, 5}, {5, 5}}) == Approx(0.0).margin(1e-12));  // independent
  // [[3, 1], [1, 3]] / 8: p(x,y) = 3/8 twice and 1/8 twice, marginals 1/2
  const double by_hand = 2 * (3.0 / 8) * std::log((3.0 / 8) / 0.25) + 2 * (1.0 / 8) * std::log((1.0 / 8) / 0.25);
  CHECK(mutual_information({{3, 1}, {1, 3}}) == Approx(by_hand));
  CHECK(mutual_information({{4, 2}, {0}}) == Approx(mutual_information({{4, 2}, {0, 0}})));  // short rows are 0s
  CHECK(mutual_information({}) == 0.0);
  CHECK(mutual_information({{7, 3, 0}}) == Approx(0.0).margin(1e-12));  // one group
  CHECK(entropy_nats({1, 1, 1, 1}) == Approx(std::log(4.0)));
  CHECK(entropy_nats({0, 5}) == 0.0);
  CHECK(entropy_nats({}) == 0.0);
}

TEST_CASE("routing information per layer from hand-made routings of two families", "[unit][moe][routing]") {
  // layer A: family "count" sends its 4 text tokens to expert 0 and its 2 image tokens to expert 1, family
  // "colour" sends its 4 text tokens to expert 1. Layer B: both families split their tokens evenly.
  RoutingStats count, colour;
  record_choices(count, "A", {0, 0, 0, 0, 1, 1}, {0, 0, 0, 0, 1, 1});
  record_choices(colour, "A", {1, 1, 1, 1}, {0, 0, 0, 0});
  record_choices(count, "B", {0, 1, 0, 1}, {0, 0, 0, 0});
  record_choices(colour, "B", {0, 1, 0, 1}, {0, 0, 0, 0});
  const auto info = routing_information({{"count", count.table()}, {"colour", colour.table()}});
  REQUIRE(info.size() == 2);
  const LayerInformation& a = info[0];
  CHECK(a.layer == "A");
  CHECK(a.tokens == 10);
  REQUIRE(a.families == std::vector<std::string>{"colour", "count"});  // the map's order
  // expert x family: colour [0, 4], count [4, 2]; expert x modality: text [4, 4], image [0, 2]
  CHECK(a.mi_family == Approx(mutual_information({{0, 4}, {4, 2}})));
  CHECK(a.h_family == Approx(entropy_nats({4, 6})));
  CHECK(a.mi_modality == Approx(mutual_information({{4, 4}, {0, 2}})));
  CHECK(a.h_modality == Approx(entropy_nats({8, 2})));
  CHECK(a.family_share[0] == std::vector<double>{0.0, 1.0});
  CHECK(a.family_share[1][0] == Approx(4.0 / 6));
  const LayerInformation& b = info[1];
  CHECK(b.mi_family == Approx(0.0).margin(1e-12));
  CHECK(b.mi_modality == 0.0);  // one modality
  CHECK(b.h_modality == 0.0);

  const auto j = routing_information_json(info);
  CHECK(j["layers"][0]["nmi_family"].get<double>() == Approx(a.mi_family / a.h_family));
  CHECK(j["layers"][1]["nmi_modality"].is_null());  // H(modality) = 0: undefined, not 0

  // one table: the modality information alone
  const auto alone = routing_information({{"all", count.table()}});
  CHECK(alone[0].mi_family == 0.0);
  CHECK(alone[0].mi_modality == Approx(mutual_information({{4, 0}, {0, 2}})));  // the expert tells the modality
  CHECK(alone[0].mi_modality == Approx(entropy_nats({4, 2})));
}
