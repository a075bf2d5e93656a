#include "moe/routing_info.h"

#include <algorithm>
#include <cmath>

namespace mole {

double entropy_nats(const std::vector<double>& counts) {
  double total = 0;
  for (double c : counts) total += c;
  if (!(total > 0)) return 0.0;
  double h = 0;
  for (double c : counts)
    if (c > 0) h -= c / total * std::log(c / total);
  return h;
}

double mutual_information(const std::vector<std::vector<double>>& counts) {
  size_t cols = 0;
  for (const auto& row : counts) cols = std::max(cols, row.size());
  std::vector<double> row_sum(counts.size(), 0.0), col_sum(cols, 0.0);
  double total = 0;
  for (size_t g = 0; g < counts.size(); ++g)
    for (size_t e = 0; e < counts[g].size(); ++e) {
      row_sum[g] += counts[g][e], col_sum[e] += counts[g][e], total += counts[g][e];
    }
  if (!(total > 0)) return 0.0;
  double mi = 0;
  for (size_t g = 0; g < counts.size(); ++g)
    for (size_t e = 0; e < counts[g].size(); ++e) {
      const double c = counts[g][e];
      if (c > 0) mi += c / total * std::log(c * total / (row_sum[g] * col_sum[e]));
    }
  return std::max(0.0, mi);  // rounding can leave -1e-17
}

std::vector<LayerInformation> routing_information(const std::map<std::string, RoutingTable>& by_family,
                                                  PhaseView view) {
  std::vector<LayerInformation> out;
  if (by_family.empty()) return out;
  for (const LayerRouting& first : by_family.begin()->second.layers) {
    LayerInformation info;
    info.layer = first.name;
    std::map<std::string, std::vector<double>> by_modality;  // modality -> top-1 counts, over every family
    std::vector<std::vector<double>> family_counts;
    for (const auto& [family, table] : by_family) {
      auto it = std::find_if(table.layers.begin(), table.layers.end(),
                             [&](const LayerRouting& l) { return l.name == first.name; });
      std::vector<double> counts(size_t(first.n_experts), 0.0);
      if (it != table.layers.end())
        for (const auto& [modality, cell] : it->cells(view)) {
          auto& m = by_modality[modality];
          m.resize(counts.size(), 0.0);
          for (int64_t e = 0; e < cell.n_experts() && e < int64_t(counts.size()); ++e) {
            counts[size_t(e)] += cell.top1_count(e);
            m[size_t(e)] += cell.top1_count(e);
          }
        }
      double tokens = 0;
      for (double c : counts) tokens += c;
      info.tokens += tokens;
      info.families.push_back(family);
      std::vector<double> share = counts;
      for (double& s : share) s = tokens > 0 ? s / tokens : NAN;
      info.family_share.push_back(share);
      family_counts.push_back(counts);
    }
    std::vector<std::vector<double>> modality_counts;
    std::vector<double> modality_tokens, family_tokens;
    for (const auto& [modality, counts] : by_modality) {
      modality_counts.push_back(counts);
      double t = 0;
      for (double c : counts) t += c;
      modality_tokens.push_back(t);
    }
    for (const auto& counts : family_counts) {
      double t = 0;
      for (double c : counts) t += c;
      family_tokens.push_back(t);
    }
    info.mi_modality = mutual_information(modality_counts);
    info.h_modality = entropy_nats(modality_tokens);
    info.mi_family = mutual_information(family_counts);
    info.h_family = entropy_nats(family_tokens);
    out.push_back(std::move(info));
  }
  return out;
}

nlohmann::json routing_information_json(const std::vector<LayerInformation>& layers) {
  auto normalised = [](double mi, double h) { return h > 0 ? nlohmann::json(mi / h) : nlohmann::json(); };
  nlohmann::json list = nlohmann::json::array();
  for (const LayerInformation& l : layers) {
    nlohmann::json shares = nlohmann::json::array();
    for (const auto& row : l.family_share) {
      nlohmann::json r = nlohmann::json::array();
      for (double v : row) r.push_back(std::isfinite(v) ? nlohmann::json(v) : nlohmann::json());
      shares.push_back(r);
    }
    list.push_back({{"layer", l.layer}, {"tokens", l.tokens}, {"mi_modality", l.mi_modality},
                    {"h_modality", l.h_modality}, {"nmi_modality", normalised(l.mi_modality, l.h_modality)},
                    {"mi_family", l.mi_family}, {"h_family", l.h_family},
                    {"nmi_family", normalised(l.mi_family, l.h_family)}, {"families", l.families},
                    {"family_share", shares}});
  }
  return {{"layers", list}};
}

}  // namespace mole
