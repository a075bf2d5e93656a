#include "moe/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <torch/torch.h>

// N=tokens E=experts K=top-k M=modalities C=columns of the sums
namespace mole {

using json = nlohmann::json;

std::string modality_name(int64_t modality) {
  if (modality == kModalityText) return "text";
  if (modality == kModalityImage) return "image";
  return "modality_" + std::to_string(modality);
}

std::string route_phase_name(RoutePhase phase) { return phase == RoutePhase::kGenerate ? "generate" : "prefill"; }

namespace {

// Column layout of a row of sums.
constexpr int64_t kColTokens = 0;
constexpr int64_t kColEntropy = 1;
constexpr int64_t kColFirstExpert = 2;
int64_t col_top1(int64_t e) { return kColFirstExpert; }
int64_t col_topk(int64_t e) { return kColFirstExpert + e; }
int64_t col_gate(int64_t e) { return kColFirstExpert + 2 * e; }
int64_t col_allowed(int64_t e) { return kColFirstExpert + 3 * e; }
int64_t n_columns(int64_t e) { return kColFirstExpert + 4 * e; }

// One (phase, modality) row of sums on the host.
struct Cell {
  const double* row;
  int64_t n_experts, top_k;
  double tokens() const { return row[kColTokens]; }
  double top1(int64_t i) const { return row[col_top1(n_experts) + i]; }
  double topk(int64_t i) const { return row[col_topk(n_experts) + i]; }
  double gate(int64_t i) const { return row[col_gate(n_experts) + i]; }
  bool allowed(int64_t i) const { return row[col_allowed(n_experts) + i] > 0; }
  double entropy() const { return tokens() > 0 ? row[kColEntropy] / tokens() : 0.0; }
  double max_top1_share() const {
    double best = 0.0;
    for (int64_t i = 0; i < n_experts; ++i) best = std::max(best, top1(i));
    return tokens() > 0 ? best / tokens() : 0.0;
  }
  // CV^2 of the top-k counts over the allowed experts (all when none is marked): unbiased var / (mean^2 + 1e-10).
  double load_cv2() const {
    std::vector<double> counts;
    bool any_allowed = false;
    for (int64_t i = 0; i < n_experts; ++i) any_allowed = any_allowed || allowed(i);
    for (int64_t i = 0; i < n_experts; ++i)
      if (!any_allowed || allowed(i)) counts.push_back(topk(i));
    if (counts.size() < 2) return 0.0;
    double mean = 0.0, var = 0.0;
    for (double c : counts) mean += c;
    mean /= double(counts.size());
    for (double c : counts) var += (c - mean) * (c - mean);
    var /= double(counts.size() - 1);
    return var / (mean * mean + 1e-10);
  }
  json to_json() const {
    json top1_counts = json::array(), topk_counts = json::array(), top1_share = json::array(),
         topk_share = json::array(), mean_gate = json::array(), allowed_experts = json::array();
    double n = tokens();
    for (int64_t i = 0; i < n_experts; ++i) {
      top1_counts.push_back(int64_t(std::llround(top1(i))));
      topk_counts.push_back(int64_t(std::llround(topk(i))));
      top1_share.push_back(top1(i) / n);
      topk_share.push_back(topk(i) / (n * double(top_k)));
      mean_gate.push_back(topk(i) > 0 ? gate(i) / topk(i) : 0.0);
      if (allowed(i)) allowed_experts.push_back(i);
    }
    return {{"tokens", int64_t(std::llround(n))}, {"top1", top1_counts},   {"topk", topk_counts},
            {"top1_share", top1_share},            {"topk_share", topk_share}, {"mean_gate", mean_gate},
            {"entropy", entropy()},                {"allowed_experts", allowed_experts}};
  }
};

}  // namespace

RoutingStats::RoutingStats(int64_t n_modalities) : n_modalities_(n_modalities) {
  TORCH_CHECK(n_modalities >= 1, "RoutingStats: n_modalities must be >= 1, got ", n_modalities);
}

void RoutingStats::record(const std::string& layer, const Routing& r, const torch::Tensor& modality,
                          const torch::Tensor& valid, RoutePhase phase) {
  torch::NoGradGuard no_grad;
  TORCH_CHECK(r.logits.defined() && r.logits.dim() == 2, "RoutingStats::record(", layer,
              "): routing.logits should be (N, E)");
  int64_t n = r.logits.size(0), e = r.logits.size(1);
  TORCH_CHECK(r.probs.defined() && r.probs.sizes() == r.logits.sizes(), "RoutingStats::record(", layer,
              "): routing.probs should be (", n, ", ", e, ")");
  TORCH_CHECK(r.topk_index.defined() && r.topk_index.dim() == 2 && r.topk_index.size(0) == n &&
                  r.topk_index.scalar_type() == torch::kInt64,
              "RoutingStats::record(", layer, "): routing.topk_index should be (", n, ", K) int64");
  int64_t k = r.topk_index.size(1);
  TORCH_CHECK(r.topk_weight.defined() && r.topk_weight.sizes() == r.topk_index.sizes(), "RoutingStats::record(",
              layer, "): routing.topk_weight should be (", n, ", ", k, ")");
  TORCH_CHECK(!r.allowed.defined() || r.allowed.sizes() == r.logits.sizes(), "RoutingStats::record(", layer,
              "): routing.allowed should be (", n, ", ", e, ")");
  TORCH_CHECK(modality.defined() && modality.dim() == 1 && modality.size(0) == n &&
                  modality.scalar_type() == torch::kInt64,
              "RoutingStats::record(", layer, "): modality should be (", n, ") int64");
  TORCH_CHECK(valid.defined() && valid.dim() == 1 && valid.size(0) == n && valid.scalar_type() == torch::kBool,
              "RoutingStats::record(", layer, "): valid should be (", n, ") bool");

  auto device = r.logits.device();
  auto found = layers_.find(layer);
  if (found == layers_.end()) {
    LayerSums fresh;
    fresh.n_experts = e;
    fresh.top_k = k;
    auto zeros = torch::zeros({n_modalities_ + 1, n_columns(e)}, torch::dtype(torch::kFloat64).device(device));
    fresh.sums[0] = zeros;
    fresh.sums[1] = zeros.clone();
    found = layers_.emplace(layer, std::move(fresh)).first;
    order_.push_back(layer);
  }
  LayerSums& sums = found->second;
  TORCH_CHECK(sums.n_experts == e && sums.top_k == k, "RoutingStats::record(", layer, "): ", e, " experts, top-", k,
              ", but the layer was first recorded with ", sums.n_experts, " experts, top-", sums.top_k);
  if (n == 0) return;

  auto f64 = torch::dtype(torch::kFloat64).device(device);
  auto is_valid = valid.to(device).unsqueeze(1);                                  // (N, 1)
  auto mod = modality.to(device);                                                 // (N)
  auto in_range = (mod >= 0) & (mod < n_modalities_);
  auto bucket = torch::where(in_range, mod, torch::full_like(mod, n_modalities_));  // (N) row of the sums

  auto experts = torch::arange(e, r.topk_index.options().device(device));          // (E)
  auto slot = (r.topk_index.detach().to(device).unsqueeze(2) == experts).to(torch::kFloat64);  // (N, K, E)
  auto top1 = slot.select(1, 0);                                                  // (N, E)
  auto topk = slot.sum(1);                                                        // (N, E)
  auto gate = (slot * r.topk_weight.detach().to(f64).unsqueeze(2)).sum(1);        // (N, E) weight where chosen
  auto probs = r.probs.detach().to(f64);                                          // (N, E)
  auto entropy = -torch::xlogy(probs, probs).sum(1, /*keepdim=*/true);            // (N, 1) -sum p log p, 0 log 0 = 0
  auto allowed = r.allowed.defined() ? r.allowed.detach().to(f64) : torch::ones({n, e}, f64);  // (N, E)
  auto rows = torch::cat({torch::ones({n, 1}, f64), entropy, top1, topk, gate, allowed}, 1);  // (N, C)
  rows = torch::where(is_valid, rows, 0.0);  // padding counts nowhere (and its NaN cannot leak in)

  torch::Tensor& target = sums.sums[static_cast<int>(phase)];
  target = target.index_add(0, bucket.to(target.device()), rows.to(target.device()));
}

json RoutingStats::to_json() const {
  json names = json::array();
  for (int64_t m = 0; m < n_modalities_; ++m) names.push_back(modality_name(m));
  json layers = json::object();
  for (const auto& name : order_) {
    const LayerSums& sums = layers_.at(name);
    json entry = {{"n_experts", sums.n_experts}, {"top_k", sums.top_k}};
    double outside = 0.0;
    for (RoutePhase phase : {RoutePhase::kPrefill, RoutePhase::kGenerate}) {
      auto host = sums.sums[static_cast<int>(phase)].cpu().contiguous();  // (M+1, C)
      const double* data = host.data_ptr<double>();
      int64_t columns = host.size(1);
      outside += data[n_modalities_ * columns + kColTokens];
      json cells = json::object();
      for (int64_t m = 0; m < n_modalities_; ++m) {
        Cell cell{data + m * columns, sums.n_experts, sums.top_k};
        if (cell.tokens() > 0) cells[modality_name(m)] = cell.to_json();
      }
      if (!cells.empty()) entry[route_phase_name(phase)] = cells;
    }
    if (outside > 0) entry["tokens_outside_modalities"] = int64_t(std::llround(outside));
    layers[name] = entry;
  }
  return {{"n_modalities", n_modalities_}, {"modality_names", names}, {"layer_order", order_}, {"layers", layers}};
}

json RoutingStats::summary_json() const {
  std::vector<double> max_share(n_modalities_, 0.0), entropy(n_modalities_, 0.0), load_cv2(n_modalities_, 0.0);
  std::vector<int64_t> seen(n_modalities_, 0);
  for (const auto& name : order_) {
    const LayerSums& sums = layers_.at(name);
    auto host = (sums.sums[0].cpu() + sums.sums[1].cpu()).contiguous();  // both phases together
    const double* data = host.data_ptr<double>();
    for (int64_t m = 0; m < n_modalities_; ++m) {
      Cell cell{data + m * host.size(1), sums.n_experts, sums.top_k};
      if (cell.tokens() <= 0) continue;
      max_share[m] += cell.max_top1_share();
      entropy[m] += cell.entropy();
      load_cv2[m] += cell.load_cv2();
      seen[m] += 1;
    }
  }
  json out = {{"layers", int64_t(order_.size())}};
  for (int64_t m = 0; m < n_modalities_; ++m) {
    if (seen[m] == 0) continue;
    double layers = double(seen[m]);
    out[modality_name(m)] = {
        {"max_share", max_share[m] / layers}, {"entropy", entropy[m] / layers}, {"load_cv2", load_cv2[m] / layers}};
  }
  return out;
}

std::string RoutingStats::summary() const {
  json s = summary_json();
  std::string line;
  for (int64_t m = 0; m < n_modalities_; ++m) {
    std::string name = modality_name(m);
    if (!s.contains(name)) continue;
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s: max-share %.2f H %.2f cv2 %.2f", name.c_str(),
                  s[name]["max_share"].get<double>(), s[name]["entropy"].get<double>(),
                  s[name]["load_cv2"].get<double>());
    line += (line.empty() ? "" : " | ") + std::string(buf);
  }
  return line.empty() ? "no routing recorded" : line;
}

void RoutingStats::reset() {
  order_.clear();
  layers_.clear();
}

void RoutingStats::merge(const RoutingStats& other) {
  TORCH_CHECK(other.n_modalities_ == n_modalities_, "RoutingStats::merge: ", other.n_modalities_,
              " modalities into ", n_modalities_);
  for (const auto& name : other.order_) {
    const LayerSums& theirs = other.layers_.at(name);
    auto found = layers_.find(name);
    if (found == layers_.end()) {
      layers_.emplace(name, theirs);  // shares their tensors until either side records (updates are out of place)
      order_.push_back(name);
      continue;
    }
    LayerSums& ours = found->second;
    TORCH_CHECK(ours.n_experts == theirs.n_experts && ours.top_k == theirs.top_k, "RoutingStats::merge(", name,
                "): ", theirs.n_experts, " experts, top-", theirs.top_k, " into ", ours.n_experts, " experts, top-",
                ours.top_k);
    for (int p = 0; p < 2; ++p) ours.sums[p] = ours.sums[p] + theirs.sums[p].to(ours.sums[p].device());
  }
}

std::vector<std::string> RoutingStats::layers() const { return order_; }

}  // namespace mole
