#include "moe/routing_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include <torch/torch.h>

// N=tokens E=experts K=top-k M=modalities C=columns of the sums
namespace mole {

using json = nlohmann::json;

std::string modality_name(int64_t modality) {
  if (modality == kModalityText) return "text";
  if (modality == kModalityImage) return "image";
  return "modality_" + std::to_string(modality);
}

MOLE_ENUM_NAMES(RoutePhase, "route phase", {RoutePhase::kPrefill, "prefill"}, {RoutePhase::kGenerate, "generate"})

std::string route_phase_name(RoutePhase phase) { return enum_name(phase); }

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

// One (phase, modality) row of sums on the host as a cell.
RoutingCell cell_from_row(const double* row, int64_t n_experts, int64_t top_k) {
  RoutingCell cell;
  cell.top_k = top_k;
  const double n = row[kColTokens];
  cell.tokens = n;
  cell.entropy = n > 0 ? row[kColEntropy] / n : 0.0;
  for (int64_t i = 0; i < n_experts; ++i) {
    const double top1 = row[col_top1(n_experts) + i], topk = row[col_topk(n_experts) + i];
    cell.top1_share.push_back(top1 / n);
    cell.topk_share.push_back(topk / (n * double(top_k)));
    cell.mean_gate.push_back(topk > 0 ? row[col_gate(n_experts) + i] / topk : 0.0);
    cell.allowed.push_back(row[col_allowed(n_experts) + i] > 0);
  }
  return cell;
}

json cell_to_json(const RoutingCell& c) {
  json top1 = json::array(), topk = json::array(), allowed = json::array();
  for (int64_t i = 0; i < c.n_experts(); ++i) {
    top1.push_back(int64_t(std::llround(c.top1_count(i))));
    topk.push_back(int64_t(std::llround(c.topk_count(i))));
    if (c.allowed[size_t(i)]) allowed.push_back(i);
  }
  return {{"tokens", int64_t(std::llround(c.tokens))}, {"top1", top1},
          {"topk", topk},                               {"top1_share", c.top1_share},
          {"topk_share", c.topk_share},                 {"mean_gate", c.mean_gate},
          {"entropy", c.entropy},                       {"allowed_experts", allowed}};
}

bool all_numbers(const json& list) {
  return std::all_of(list.begin(), list.end(), [](const json& v) { return v.is_number(); });
}

std::vector<double> number_list(const json& cell, const char* key, int64_t n, const std::string& where) {
  if (!cell.contains(key) || !cell[key].is_array() || int64_t(cell[key].size()) != n || !all_numbers(cell[key]))
    throw std::runtime_error(where + ": \"" + key + "\" must be a list of n_experts = " + std::to_string(n) +
                             " numbers");
  return cell[key].get<std::vector<double>>();
}

// A cell of to_json()'s form back into sums: the shares times the token count.
RoutingCell cell_from_json(const json& cell, int64_t n_experts, int64_t top_k, const std::string& where) {
  if (!cell.is_object()) throw std::runtime_error(where + ": expected an object");
  if (!cell.contains("tokens") || !cell["tokens"].is_number_integer() || cell["tokens"].get<int64_t>() < 0)
    throw std::runtime_error(where + ": \"tokens\" must be a non-negative integer");
  if (!cell.contains("entropy") || !cell["entropy"].is_number())
    throw std::runtime_error(where + ": \"entropy\" must be a number");
  RoutingCell c;
  c.top_k = top_k;
  c.tokens = double(cell["tokens"].get<int64_t>());
  c.entropy = cell["entropy"].get<double>();
  c.top1_share = number_list(cell, "top1_share", n_experts, where);
  c.topk_share = number_list(cell, "topk_share", n_experts, where);
  c.mean_gate = cell.contains("mean_gate") ? number_list(cell, "mean_gate", n_experts, where)
                                           : std::vector<double>(size_t(n_experts), 0.0);
  std::vector<bool> allowed(size_t(n_experts), !cell.contains("allowed_experts"));
  if (cell.contains("allowed_experts")) {
    const json& a = cell["allowed_experts"];
    if (!a.is_array() || !std::all_of(a.begin(), a.end(), [&](const json& e) {
          return e.is_number_integer() && e.get<int64_t>() >= 0 && e.get<int64_t>() < n_experts;
        }))
      throw std::runtime_error(where + ": \"allowed_experts\" must list expert indices below " +
                               std::to_string(n_experts));
    for (const json& e : a) allowed[size_t(e.get<int64_t>())] = true;
  }
  c.allowed = allowed;
  return c;
}

}  // namespace

double cv_squared(const std::vector<double>& values) {
  if (values.size() < 2) return 0.0;
  double mean = 0.0, var = 0.0;
  for (double v : values) mean += v;
  mean /= double(values.size());
  for (double v : values) var += (v - mean) * (v - mean);
  var /= double(values.size() - 1);
  return var / (mean * mean + 1e-10);
}

int64_t RoutingCell::busiest_expert() const {
  int64_t best = 0;
  for (int64_t i = 1; i < n_experts(); ++i)
    if (top1_share[size_t(i)] > top1_share[size_t(best)]) best = i;
  return best;
}

double RoutingCell::load_cv2() const {
  const bool any_allowed = std::find(allowed.begin(), allowed.end(), true) != allowed.end();
  std::vector<double> load;  // counts, as load_loss (the 1e-10 in CV^2's denominator is not scale-free)
  for (int64_t i = 0; i < n_experts(); ++i)
    if (!any_allowed || allowed[size_t(i)]) load.push_back(topk_count(i));
  return cv_squared(load);
}

void RoutingCell::add(const RoutingCell& other) {
  TORCH_CHECK(other.n_experts() == n_experts(), "RoutingCell::add: ", other.n_experts(), " experts into ",
              n_experts());
  const double ta = tokens, tb = other.tokens, t = std::max(ta + tb, 1.0);
  for (size_t i = 0; i < top1_share.size(); ++i) {
    const double use_a = topk_share[i] * ta, use_b = other.topk_share[i] * tb;  // top-k uses, up to the factor K
    mean_gate[i] = use_a + use_b > 0 ? (mean_gate[i] * use_a + other.mean_gate[i] * use_b) / (use_a + use_b) : 0.0;
    top1_share[i] = (top1_share[i] * ta + other.top1_share[i] * tb) / t;
    topk_share[i] = (use_a + use_b) / t;
    allowed[i] = allowed[i] || other.allowed[i];
  }
  entropy = (entropy * ta + other.entropy * tb) / t;
  tokens = ta + tb;
}

MOLE_ENUM_NAMES(PhaseView, "phase", {PhaseView::kPrefill, "prefill"}, {PhaseView::kGenerate, "generate"},
                {PhaseView::kBoth, "both"})

std::map<std::string, RoutingCell> LayerRouting::cells(PhaseView view) const {
  if (view == PhaseView::kPrefill) return phase_cells[0];
  if (view == PhaseView::kGenerate) return phase_cells[1];
  std::map<std::string, RoutingCell> pooled = phase_cells[0];
  for (const auto& [modality, cell] : phase_cells[1]) {
    auto it = pooled.find(modality);
    if (it == pooled.end()) pooled.emplace(modality, cell);
    else it->second.add(cell);
  }
  return pooled;
}

json RoutingTable::to_json() const {
  json names = json::array(), order = json::array(), out_layers = json::object();
  for (int64_t m = 0; m < n_modalities; ++m) names.push_back(modality_name(m));
  for (const LayerRouting& layer : layers) {
    json entry = {{"n_experts", layer.n_experts}, {"top_k", layer.top_k}};
    for (RoutePhase phase : {RoutePhase::kPrefill, RoutePhase::kGenerate}) {
      json cells = json::object();
      for (const auto& [modality, cell] : layer.phase_cells[int(phase)]) cells[modality] = cell_to_json(cell);
      if (!cells.empty()) entry[route_phase_name(phase)] = cells;
    }
    if (layer.tokens_outside_modalities > 0) entry["tokens_outside_modalities"] = layer.tokens_outside_modalities;
    order.push_back(layer.name);
    out_layers[layer.name] = entry;
  }
  return {{"n_modalities", n_modalities}, {"modality_names", names}, {"layer_order", order}, {"layers", out_layers}};
}

RoutingTable RoutingTable::from_json(const json& stats, const std::string& what) {
  if (!stats.is_object() || !stats.contains("layers") || !stats["layers"].is_object() || stats["layers"].empty())
    throw std::runtime_error(what + ": expected RoutingStats::to_json() output with a non-empty \"layers\" object");
  std::vector<std::string> order;
  if (!stats.contains("layer_order")) {
    for (const auto& [name, layer] : stats["layers"].items()) order.push_back(name);
  } else if (!stats["layer_order"].is_array() || stats["layer_order"].empty() ||
             !std::all_of(stats["layer_order"].begin(), stats["layer_order"].end(),
                          [](const json& n) { return n.is_string(); })) {
    throw std::runtime_error(what + ": \"layer_order\" must be a non-empty list of layer names");
  } else {
    order = stats["layer_order"].get<std::vector<std::string>>();
  }
  RoutingTable table;
  if (stats.contains("n_modalities") && stats["n_modalities"].is_number_integer())
    table.n_modalities = stats["n_modalities"].get<int64_t>();
  for (const std::string& name : order) {
    const std::string where = what + ": layer '" + name + "'";
    if (!stats["layers"].contains(name)) throw std::runtime_error(where + " is in layer_order but not in layers");
    const json& j = stats["layers"][name];
    if (!j.is_object() || !j.contains("n_experts") || !j["n_experts"].is_number_integer() ||
        j["n_experts"].get<int64_t>() < 1 || !j.contains("top_k") || !j["top_k"].is_number_integer() ||
        j["top_k"].get<int64_t>() < 1)
      throw std::runtime_error(where + ": needs integer \"n_experts\" >= 1 and \"top_k\" >= 1");
    LayerRouting layer;
    layer.name = name;
    layer.n_experts = j["n_experts"].get<int64_t>();
    layer.top_k = j["top_k"].get<int64_t>();
    if (j.contains("tokens_outside_modalities") && j["tokens_outside_modalities"].is_number_integer())
      layer.tokens_outside_modalities = j["tokens_outside_modalities"].get<int64_t>();
    for (RoutePhase phase : {RoutePhase::kPrefill, RoutePhase::kGenerate}) {
      const std::string p = route_phase_name(phase);
      if (!j.contains(p)) continue;
      if (!j[p].is_object()) throw std::runtime_error(where + ": \"" + p + "\" must map modality names to cells");
      for (const auto& [modality, cell] : j[p].items()) {
        RoutingCell c = cell_from_json(cell, layer.n_experts, layer.top_k, where + " " + p + "." + modality);
        if (c.tokens > 0) layer.phase_cells[int(phase)][modality] = c;
      }
    }
    table.layers.push_back(layer);
  }
  return table;
}

void RoutingTable::merge(const RoutingTable& other) {
  for (const LayerRouting& theirs : other.layers) {
    auto it = std::find_if(layers.begin(), layers.end(), [&](const LayerRouting& l) { return l.name == theirs.name; });
    if (it == layers.end()) {
      layers.push_back(theirs);
      continue;
    }
    TORCH_CHECK(it->n_experts == theirs.n_experts && it->top_k == theirs.top_k, "RoutingTable::merge: layer ",
                theirs.name, " has ", theirs.n_experts, " experts top-", theirs.top_k, " here and ", it->n_experts,
                " top-", it->top_k, " there");
    it->tokens_outside_modalities += theirs.tokens_outside_modalities;
    for (int phase = 0; phase < 2; ++phase)
      for (const auto& [modality, cell] : theirs.phase_cells[phase]) {
        auto mine = it->phase_cells[phase].find(modality);
        if (mine == it->phase_cells[phase].end()) it->phase_cells[phase].emplace(modality, cell);
        else mine->second.add(cell);
      }
  }
}

json RoutingTable::summary_json() const {
  struct Mean {
    double max_share = 0, entropy = 0, load_cv2 = 0;
    int64_t layers = 0;
  };
  std::map<std::string, Mean> means;
  for (const LayerRouting& layer : layers)
    for (const auto& [modality, cell] : layer.cells(PhaseView::kBoth)) {
      Mean& m = means[modality];
      m.max_share += cell.max_top1_share();
      m.entropy += cell.entropy;
      m.load_cv2 += cell.load_cv2();
      m.layers += 1;
    }
  json out = {{"layers", int64_t(layers.size())}};
  for (const auto& [modality, m] : means) {
    double n = double(m.layers);
    out[modality] = {{"max_share", m.max_share / n}, {"entropy", m.entropy / n}, {"load_cv2", m.load_cv2 / n}};
  }
  return out;
}

std::string RoutingTable::summary() const {
  json s = summary_json();
  std::string line;
  for (int64_t m = 0; m < n_modalities; ++m) {
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

json RoutingTable::expert_load() const {
  json out = {{"layers", json::array()}, {"text", json::array()}, {"image", json::array()}};
  for (const LayerRouting& layer : layers) {
    out["layers"].push_back(layer.name);
    for (const char* modality : {"text", "image"}) {
      auto it = layer.phase_cells[int(RoutePhase::kPrefill)].find(modality);
      out[modality].push_back(it == layer.phase_cells[0].end() ? json::array() : json(it->second.topk_share));
    }
  }
  return out;
}

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

RoutingTable RoutingStats::table() const {
  RoutingTable table;
  table.n_modalities = n_modalities_;
  for (const auto& name : order_) {
    const LayerSums& sums = layers_.at(name);
    LayerRouting layer;
    layer.name = name;
    layer.n_experts = sums.n_experts;
    layer.top_k = sums.top_k;
    double outside = 0.0;
    for (RoutePhase phase : {RoutePhase::kPrefill, RoutePhase::kGenerate}) {
      auto host = sums.sums[static_cast<int>(phase)].cpu().contiguous();  // (M+1, C)
      const double* data = host.data_ptr<double>();
      const int64_t columns = host.size(1);
      outside += data[n_modalities_ * columns + kColTokens];
      for (int64_t m = 0; m < n_modalities_; ++m) {
        RoutingCell cell = cell_from_row(data + m * columns, sums.n_experts, sums.top_k);
        if (cell.tokens > 0) layer.phase_cells[int(phase)][modality_name(m)] = cell;
      }
    }
    layer.tokens_outside_modalities = int64_t(std::llround(outside));
    table.layers.push_back(layer);
  }
  return table;
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
