// Routing by task family in training (moe/family_routing.h) on hand-made routing: the per-family top-1 counts,
// the mutual information against a hand computation, uncounted tokens, pooling and the JSON form.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "moe/family_routing.h"

using namespace mole;
using json = nlohmann::json;

namespace {

// A routing of N tokens over E experts whose first choices are `top1` (only topk_index and the shape matter).
Routing top1_routing(const std::vector<int64_t>& top1, int64_t e) {
  const int64_t n = int64_t(top1.size());
  Routing r;
  r.logits = torch::zeros({n, e});
  r.probs = torch::full({n, e}, 1.0 / double(e));
  r.topk_index = torch::tensor(top1, torch::kInt64).view({n, 1});
  r.topk_weight = torch::ones({n, 1});
  return r;
}

}  // namespace

TEST_CASE("family routing: top-1 counts per family, MI by hand, padding uncounted, pooled and read back",
          "[unit][moe][routing]") {
  FamilyRouting families({"a", "b", "c", "d"});
  // a: experts 0 0 1; b: 2 2 2; c: 2; token 6 is padding (-1); d has no tokens
  families.set_tokens(torch::tensor(std::vector<int64_t>{0, 0, 0, 1, 1, 2, -1, 1}, torch::kInt64));
  const Routing r = top1_routing({0, 0, 1, 2, 2, 2, 3, 2}, 4);
  families.record("layers.0.mlp", r);
  families.record("layers.1.mlp", r);
  families.record("layers.1.mlp", r);  // a second forward over the same tokens adds

  const FamilyRoutingTable t = families.table();
  REQUIRE(t.layers == std::vector<std::string>{"layers.0.mlp", "layers.1.mlp"});
  const std::vector<std::vector<double>> once = {{2, 1, 0, 0}, {0, 0, 3, 0}, {0, 0, 1, 0}, {0, 0, 0, 0}};
  CHECK(t.top1[0] == once);
  for (size_t f = 0; f < once.size(); ++f)
    for (size_t e = 0; e < 4; ++e) CHECK(t.top1[1][f][e] == 2 * once[f][e]);

  // I = sum p(f,e) log(p(f,e) / (p(f) p(e))) over 7 tokens: p(a) = p(b) = 3/7, p(c) = 1/7;
  // p(e0) = 2/7, p(e1) = 1/7, p(e2) = 4/7
  const double mi = 2.0 / 7 * std::log((2.0 / 7) / (3.0 / 7 * 2.0 / 7)) + 1.0 / 7 * std::log((1.0 / 7) / (3.0 / 7 * 1.0 / 7)) +
                    3.0 / 7 * std::log((3.0 / 7) / (3.0 / 7 * 4.0 / 7)) + 1.0 / 7 * std::log((1.0 / 7) / (1.0 / 7 * 4.0 / 7));
  const double h_family = -2 * (3.0 / 7) * std::log(3.0 / 7) - 1.0 / 7 * std::log(1.0 / 7);
  const json summary = t.summary_json();
  CHECK(summary["families"] == json({"a", "b", "c", "d"}));
  for (const char* layer : {"layers.0.mlp", "layers.1.mlp"}) {
    INFO(layer);
    const json& l = summary["layers"][layer];
    CHECK(std::abs(l["mi"].get<double>() - mi) < 1e-12);  // doubling every count changes no probability
    CHECK(std::abs(l["nmi"].get<double>() - mi / h_family) < 1e-12);
    CHECK(std::abs(l["share"][0][0].get<double>() - 2.0 / 3) < 1e-12);
    CHECK(l["share"][1] == json({0.0, 0.0, 1.0, 0.0}));
    CHECK(l["share"][3] == json({nullptr, nullptr, nullptr, nullptr}));  // no tokens: no share
  }
  CHECK(summary["layers"]["layers.0.mlp"]["tokens"] == 7.0);
  CHECK(summary["layers"]["layers.1.mlp"]["tokens"] == 14.0);
  CHECK(std::abs(summary["mean_nmi"].get<double>() - mi / h_family) < 1e-12);

  // the JSON form reads back, and two ranks' tables pool by adding
  FamilyRoutingTable pooled = FamilyRoutingTable::from_json(json::parse(t.to_json().dump()), "rank 0");
  CHECK(pooled.top1 == t.top1);
  pooled.merge(t);
  CHECK(pooled.top1[0][1][2] == 6.0);
  CHECK(pooled.top1[1][0][0] == 8.0);
  FamilyRoutingTable other_families = t;
  other_families.families = {"x", "y", "z", "w"};
  CHECK_THROWS_WITH(pooled.merge(other_families), Catch::Contains("different families"));
  CHECK_THROWS_WITH(FamilyRoutingTable::from_json({{"families", {"a"}}, {"layers", {"l"}}, {"top1", {{{-1.0}}}}},
                                                  "rank 1"),
                    Catch::Contains("rank 1") && Catch::Contains("counts >= 0"));

  // reset forgets the counts, not the layers; the same expert count is required of a layer
  families.reset();
  CHECK(families.table().top1[0] == std::vector<std::vector<double>>(4, std::vector<double>(4, 0.0)));
  CHECK_THROWS_WITH(families.record("layers.0.mlp", top1_routing({0, 0, 1, 2, 2, 2, 3, 2}, 8)),
                    Catch::Contains("first recorded with 4"));
  // a decision over other tokens than the families were set for (the vision tower's) is a caller's bug
  CHECK_THROWS_WITH(families.record("layers.0.mlp", top1_routing({0, 1}, 4)),
                    Catch::Contains("families were set for 8"));
}

TEST_CASE("family routing: one family or an expert that says nothing gives zero information", "[unit][moe][routing]") {
  FamilyRouting families({"only", "other"});
  families.set_tokens(torch::tensor(std::vector<int64_t>{0, 0, 0, 0}, torch::kInt64));
  families.record("l", top1_routing({0, 1, 2, 3}, 4));
  json l = families.table().summary_json()["layers"]["l"];
  CHECK(l["mi"] == 0.0);
  CHECK(l["nmi"] == 0.0);  // H(family) = 0
  // two families spread alike over the experts
  families.reset();
  families.set_tokens(torch::tensor(std::vector<int64_t>{0, 0, 1, 1}, torch::kInt64));
  families.record("l", top1_routing({0, 1, 0, 1}, 4));
  l = families.table().summary_json()["layers"]["l"];
  CHECK(std::abs(l["mi"].get<double>()) < 1e-15);
  // the expert names the family: I = H(family) = ln 2, normalised 1
  families.reset();
  families.record("l", top1_routing({3, 3, 1, 1}, 4));
  l = families.table().summary_json()["layers"]["l"];
  CHECK(std::abs(l["mi"].get<double>() - std::log(2.0)) < 1e-12);
  CHECK(std::abs(l["nmi"].get<double>() - 1.0) < 1e-12);
}
