// How much a router's choice says about the token: the mutual information between the top-1 expert and the
// token's modality, and between the expert and the token's task family (Mixtral's routing-by-domain question:
// do experts specialise by what the tokens are about, or only by position and syntax?). From count tables, so the
// same code serves a RoutingTable (modality) and a set of tables, one per task family.
//
// I(X; Y) = sum_xy p(x,y) log(p(x,y) / (p(x) p(y))) in nats; 0 when either variable takes one value or the table
// is empty. The normalised form divides by H(Y) of the group variable (family or modality): 1 when the expert
// determines the group, 0 when they are independent. Both are plug-in estimates: with few tokens per cell they are
// biased upwards (about (rows - 1)(cols - 1) / (2 N) nats), which the report states with the token counts.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/routing_stats.h"

namespace mole {

// counts[g][e] >= 0: tokens of group g whose top-1 expert is e (rows may have different lengths: missing = 0).
double mutual_information(const std::vector<std::vector<double>>& counts);
double entropy_nats(const std::vector<double>& counts);  // of the distribution counts / sum

// Per layer of one or several routing tables of the same model.
struct LayerInformation {
  std::string layer;
  double tokens = 0;
  double mi_modality = 0, h_modality = 0;  // I(expert; modality), H(modality), nats
  double mi_family = 0, h_family = 0;      // I(expert; family), H(family); 0 with one family
  std::vector<std::string> families;       // rows of family_share
  std::vector<std::vector<double>> family_share;  // [family][expert]: top-1 share within the family's tokens
};

// The tables of one model, one per task family (all modalities and the given phases pooled within each): per layer
// in the first table's order, the family shares and both informations. A single table (one family) gives the
// modality information alone.
std::vector<LayerInformation> routing_information(const std::map<std::string, RoutingTable>& by_family,
                                                  PhaseView view = PhaseView::kPrefill);

// {"layers": [{"layer", "tokens", "mi_modality", "h_modality", "nmi_modality", "mi_family", "h_family",
//   "nmi_family", "families", "family_share"}]}
nlohmann::json routing_information_json(const std::vector<LayerInformation>& layers);

}  // namespace mole
