// Routing statistics cheap enough to leave on in training and evaluation (docs/MOE.md "What the routing
// statistics show"): per layer, phase, modality and expert, the share of tokens (top-1 and top-k), the mean gate
// weight and the router entropy, so that collapse (one expert takes most tokens) and modality specialisation
// (image tokens favour some experts) show at a glance.
//
// record() only queues device work: the sums stay on the routing's device, nothing is copied to the host and
// nothing waits for the device; table() copies them (one sync per layer) into a RoutingTable, the one typed
// form that the trainer's log, `mole routes` and the routing report read.
//
// N=tokens E=experts K=top-k M=modalities
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "core/fields.h"
#include "moe/routing.h"

namespace mole {

enum class RoutePhase { kPrefill = 0, kGenerate = 1 };  // prompt tokens vs generated tokens
template <>
const EnumTable<RoutePhase>& enum_table<RoutePhase>();

// "text" (0), "image" (1), else "modality_<m>".
std::string modality_name(int64_t modality);
std::string route_phase_name(RoutePhase phase);  // prefill | generate

// CV^2 = unbiased variance / (mean^2 + 1e-10) of a list (0 for fewer than two values): the statistic of the
// load_loss (moe/balance.h) on host numbers. The one place statistics and reports compute it.
double cv_squared(const std::vector<double>& values);

// One (phase, modality) cell of a layer: what the routers did with these tokens. Pooling two cells (both phases,
// several runs) weights shares and entropies by tokens and mean gates by use, in one place (add()).
struct RoutingCell {
  int64_t top_k = 1;
  double tokens = 0.0;             // valid tokens counted
  double entropy = 0.0;            // mean over tokens of -sum_i p_i log p_i (nats, 0 log 0 = 0)
  std::vector<double> top1_share;  // (E) tokens whose first choice is the expert / tokens
  std::vector<double> topk_share;  // (E) top-k slots that hold the expert / (tokens * K)
  std::vector<double> mean_gate;   // (E) mean gate weight over the tokens that chose it (0: never chosen)
  std::vector<bool> allowed;       // (E) some of these tokens were allowed to use the expert

  int64_t n_experts() const { return int64_t(top1_share.size()); }
  double top1_count(int64_t i) const { return top1_share[size_t(i)] * tokens; }
  double topk_count(int64_t i) const { return topk_share[size_t(i)] * tokens * double(top_k); }
  int64_t busiest_expert() const;  // the largest top-1 share (the lower index on ties)
  double max_top1_share() const { return n_experts() ? top1_share[size_t(busiest_expert())] : 0.0; }
  // CV^2 of the top-k load over the allowed experts (all when none is marked).
  double load_cv2() const;
  void add(const RoutingCell& other);  // pool with another cell of the same experts
};

// Which phase a view of the statistics shows: one, or both pooled.
enum class PhaseView { kPrefill, kGenerate, kBoth };
template <>
const EnumTable<PhaseView>& enum_table<PhaseView>();  // prefill | generate | both

struct LayerRouting {
  std::string name;
  int64_t n_experts = 0, top_k = 0;
  std::map<std::string, RoutingCell> phase_cells[2];  // by RoutePhase: modality name -> cell (tokens > 0 only)
  int64_t tokens_outside_modalities = 0;
  // The cells of one phase, or both pooled (token-weighted: the sums add).
  std::map<std::string, RoutingCell> cells(PhaseView view) const;
};

// The typed routing statistics every consumer reads: the trainer's log line, `mole routes` and its report.
struct RoutingTable {
  int64_t n_modalities = 2;
  std::vector<LayerRouting> layers;  // in first-recorded order

  // The full table:
  // {"n_modalities": M, "modality_names": [...], "layer_order": [first-recorded order],
  //  "layers": {LAYER: {"n_experts": E, "top_k": K, ["tokens_outside_modalities": n,]
  //    "prefill" | "generate": {"text" | "image" | ...: {
  //       "tokens": n, "top1": [E counts], "topk": [E counts],
  //       "top1_share": [top1 / n], "topk_share": [topk / (n*K)],
  //       "mean_gate": [gate sum / topk count, 0 when the count is 0],
  //       "entropy": mean over tokens of -sum_i p_i log p_i,
  //       "allowed_experts": [experts some of these tokens were allowed to use]}}}}}
  // Empty phase and modality cells are left out.
  nlohmann::json to_json() const;
  // Reads to_json()'s form (shares, tokens and entropy are what count; "top1"/"topk" counts are not needed).
  // Malformed input is a std::runtime_error that starts with `what` and names the layer and key.
  static RoutingTable from_json(const nlohmann::json& j, const std::string& what = "routing stats");
  // Pools another table of the same layers into this one (the ranks of a data-parallel step): cells add as
  // RoutingCell::add does, layers and cells only the other has are taken over.
  void merge(const RoutingTable& other);

  // Compact, for a trainer's metrics line: {"layers": n_layers, MODALITY: {"max_share", "entropy", "load_cv2"}},
  // each the mean over the layers that saw the modality (both phases pooled) of: the top-1 share of the busiest
  // expert, the mean router entropy, and the load CV^2. Modalities never seen are left out.
  nlohmann::json summary_json() const;
  // One short line, e.g. "text: max-share 0.31 H 1.92 cv2 0.04 | image: max-share 0.55 H 1.40 cv2 0.61".
  std::string summary() const;
  // Each expert's top-k share per layer and modality, prefill phase (what `mole routes` plots over training):
  // {"layers": [names], "text": [[share per expert] per layer], "image": [...]}; [] where a layer saw none.
  nlohmann::json expert_load() const;
};

class RoutingStats {
 public:
  explicit RoutingStats(int64_t n_modalities = 2);

  // One routing decision of the layer `layer` (e.g. "language_model.model.layers.3.mlp"): modality (N) int64,
  // valid (N) bool (padding is not counted). Valid tokens whose modality is outside [0, n_modalities) are only
  // counted, as "tokens_outside_modalities" of the layer. The routing is detached; the layer's expert count and
  // top-k are fixed by its first record (checked).
  void record(const std::string& layer, const Routing& r, const torch::Tensor& modality, const torch::Tensor& valid,
              RoutePhase phase = RoutePhase::kPrefill);

  // The sums so far, copied to the host (one sync per layer).
  RoutingTable table() const;
  nlohmann::json to_json() const { return table().to_json(); }

  void reset();                           // forget every layer
  void merge(const RoutingStats& other);  // add another's sums (e.g. from eval workers); same n_modalities
  std::vector<std::string> layers() const;  // in first-recorded order
  int64_t n_modalities() const { return n_modalities_; }

 private:
  // Sums of one layer and phase: (M+1, C) float64, one row per modality plus a last row for valid tokens of
  // modalities outside [0, M); columns: token count, entropy sum, then E each of top-1 counts, top-k counts,
  // gate-weight sums (over tokens that chose the expert) and allowed counts. float64 keeps counts exact.
  struct LayerSums {
    int64_t n_experts = 0;
    int64_t top_k = 0;
    torch::Tensor sums[2];  // by RoutePhase; updated out of place, so copies of a RoutingStats stay independent
  };

  int64_t n_modalities_;
  std::vector<std::string> order_;
  std::unordered_map<std::string, LayerSums> layers_;
};

}  // namespace mole
