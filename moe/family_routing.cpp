#include "moe/family_routing.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <torch/torch.h>

#include "moe/routing_info.h"

namespace mole {

using json = nlohmann::json;

json FamilyRoutingTable::to_json() const {
  return {{"families", families}, {"layers", layers}, {"top1", top1}};
}

FamilyRoutingTable FamilyRoutingTable::from_json(const json& j, const std::string& what) {
  auto fail = [&](const std::string& msg) { throw std::runtime_error(what + ": " + msg); };
  if (!j.is_object()) fail("not a JSON object");
  FamilyRoutingTable t;
  for (const char* key : {"families", "layers", "top1"})
    if (!j.contains(key) || !j[key].is_array()) fail(std::string("\"") + key + "\" must be a list");
  for (const auto& f : j["families"]) {
    if (!f.is_string()) fail("\"families\" must hold strings");
    t.families.push_back(f.get<std::string>());
  }
  for (const auto& l : j["layers"]) {
    if (!l.is_string()) fail("\"layers\" must hold strings");
    t.layers.push_back(l.get<std::string>());
  }
  const json& top1 = j["top1"];
  if (top1.size() != t.layers.size()) fail("\"top1\" must hold one table per layer");
  for (size_t l = 0; l < top1.size(); ++l) {
    const std::string at = "top1[" + std::to_string(l) + "] (" + t.layers[l] + ")";
    if (!top1[l].is_array() || top1[l].size() != t.families.size()) fail(at + " must hold one row per family");
    std::vector<std::vector<double>> rows;
    for (const auto& row : top1[l]) {
      if (!row.is_array()) fail(at + " must hold lists of counts");
      std::vector<double> counts;
      for (const auto& c : row) {
        if (!c.is_number() || !(c.get<double>() >= 0)) fail(at + " must hold counts >= 0");
        counts.push_back(c.get<double>());
      }
      if (!rows.empty() && counts.size() != rows.front().size()) fail(at + ": rows of different lengths");
      rows.push_back(std::move(counts));
    }
    t.top1.push_back(std::move(rows));
  }
  return t;
}

void FamilyRoutingTable::merge(const FamilyRoutingTable& other) {
  if (other.layers.empty()) return;
  if (layers.empty()) {
    *this = other;
    return;
  }
  if (other.families != families)
    throw std::runtime_error("family routing: cannot pool tables of different families");
  for (size_t l = 0; l < other.layers.size(); ++l) {
    auto it = std::find(layers.begin(), layers.end(), other.layers[l]);
    if (it == layers.end()) {
      layers.push_back(other.layers[l]);
      top1.push_back(other.top1[l]);
      continue;
    }
    auto& mine = top1[size_t(it - layers.begin())];
    for (size_t f = 0; f < mine.size(); ++f) {
      if (mine[f].size() != other.top1[l][f].size())
        throw std::runtime_error("family routing: layer " + other.layers[l] + " has different expert counts");
      for (size_t e = 0; e < mine[f].size(); ++e) mine[f][e] += other.top1[l][f][e];
    }
  }
}

json FamilyRoutingTable::summary_json() const {
  json out = {{"families", families}, {"layers", json::object()}};
  double nmi_sum = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& counts = top1[l];
    std::vector<double> family_tokens;
    json share = json::array();
    double tokens = 0;
    for (const auto& row : counts) {
      double t = 0;
      for (double c : row) t += c;
      family_tokens.push_back(t);
      tokens += t;
      json r = json::array();
      for (double c : row) r.push_back(t > 0 ? json(c / t) : json());
      share.push_back(r);
    }
    const double mi = mutual_information(counts), h = entropy_nats(family_tokens);
    const double nmi = h > 0 ? mi / h : 0.0;
    nmi_sum += nmi;
    out["layers"][layers[l]] = {{"tokens", tokens}, {"mi", mi}, {"nmi", nmi}, {"share", share}};
  }
  out["mean_nmi"] = layers.empty() ? 0.0 : nmi_sum / double(layers.size());
  return out;
}

FamilyRouting::FamilyRouting(std::vector<std::string> families) : families_(std::move(families)) {}

void FamilyRouting::set_tokens(const torch::Tensor& family) {
  TORCH_CHECK(family.defined() && family.scalar_type() == torch::kInt64, "FamilyRouting: token families must be "
              "int64");
  const int64_t f = int64_t(families_.size());
  auto flat = family.reshape({-1});
  tokens_ = torch::where(flat.ge(0).logical_and(flat.lt(f)), flat, torch::full_like(flat, f));
}

void FamilyRouting::record(const std::string& layer, const Routing& r) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(tokens_.defined(), "FamilyRouting::record(", layer, "): no token families set");
  TORCH_CHECK(r.topk_index.defined() && r.topk_index.dim() == 2 && r.topk_index.size(0) == tokens_.size(0),
              "FamilyRouting::record(", layer, "): ", r.topk_index.defined() ? r.topk_index.size(0) : 0,
              " routed tokens, but families were set for ", tokens_.size(0));
  const int64_t e = r.n_experts(), rows = int64_t(families_.size()) + 1;
  auto device = r.topk_index.device();
  auto found = counts_.find(layer);
  if (found == counts_.end()) {
    found = counts_.emplace(layer, torch::zeros({rows, e}, torch::dtype(torch::kFloat64).device(device))).first;
    order_.push_back(layer);
  }
  TORCH_CHECK(found->second.size(1) == e, "FamilyRouting::record(", layer, "): ", e, " experts, but the layer was "
              "first recorded with ", found->second.size(1));
  if (tokens_.size(0) == 0) return;
  auto cell = tokens_.to(device) * e + r.topk_index.select(1, 0);  // (N) family-major cell of the top-1 expert
  found->second.view({-1}).index_add_(0, cell, torch::ones({cell.size(0)}, found->second.options()));
}

FamilyRoutingTable FamilyRouting::table() const {
  FamilyRoutingTable t;
  t.families = families_;
  for (const std::string& layer : order_) {
    auto counts = counts_.at(layer).narrow(0, 0, int64_t(families_.size())).cpu().contiguous();
    auto a = counts.accessor<double, 2>();
    std::vector<std::vector<double>> rows(size_t(counts.size(0)), std::vector<double>(size_t(counts.size(1))));
    for (int64_t f = 0; f < counts.size(0); ++f)
      for (int64_t x = 0; x < counts.size(1); ++x) rows[size_t(f)][size_t(x)] = a[f][x];
    t.layers.push_back(layer);
    t.top1.push_back(std::move(rows));
  }
  return t;
}

void FamilyRouting::reset() {
  for (auto& [layer, counts] : counts_) counts.zero_();
}

}  // namespace mole
