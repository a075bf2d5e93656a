// Routing statistics cheap enough to leave on in training and evaluation (MOE.md "What the routing statistics
// should show"): per layer, phase, modality and expert, the share of tokens (top-1 and top-k), the mean gate
// weight and the router entropy, so that collapse (one expert takes most tokens) and modality specialisation
// (image tokens favour some experts) show at a glance.
//
// record() only queues device work: the sums stay on the routing's device, nothing is copied to the host and
// nothing waits for the device; to_json(), summary_json() and summary() copy them (one sync per layer).
//
// N=tokens E=experts K=top-k M=modalities
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "moe/routing.h"

namespace mole {

enum class RoutePhase { kPrefill = 0, kGenerate = 1 };  // prompt tokens vs generated tokens

// "text" (0), "image" (1), else "modality_<m>".
std::string modality_name(int64_t modality);
std::string route_phase_name(RoutePhase phase);  // prefill | generate

class RoutingStats {
 public:
  explicit RoutingStats(int64_t n_modalities = 2);

  // One routing decision of the layer `layer` (e.g. "language_model.model.layers.3.mlp"): modality (N) int64,
  // valid (N) bool (padding is not counted). Valid tokens whose modality is outside [0, n_modalities) are only
  // counted, as "tokens_outside_modalities" of the layer. The routing is detached; the layer's expert count and
  // top-k are fixed by its first record (checked).
  void record(const std::string& layer, const Routing& r, const torch::Tensor& modality, const torch::Tensor& valid,
              RoutePhase phase = RoutePhase::kPrefill);

  // The full table:
  // {"n_modalities": M, "modality_names": [...], "layer_order": [first-recorded order],
  //  "layers": {LAYER: {"n_experts": E, "top_k": K, ["tokens_outside_modalities": n,]
  //    "prefill" | "generate": {"text" | "image" | ...: {
  //       "tokens": n, "top1": [E counts], "topk": [E counts],
  //       "top1_share": [top1 / n], "topk_share": [topk / (n*K)],
  //       "mean_gate": [gate sum / topk count, 0 when the count is 0],
  //       "entropy": mean over tokens of -sum_i p_i log p_i (nats, 0 log 0 = 0),
  //       "allowed_experts": [experts some of these tokens were allowed to use]}}}}}
  // Empty phase and modality cells are left out.
  nlohmann::json to_json() const;
  // Compact, for a trainer's metrics line: {"layers": n_layers, MODALITY: {"max_share", "entropy", "load_cv2"}},
  // each the mean over the layers that saw the modality (both phases together) of: the top-1 share of the
  // busiest expert, the mean router entropy, and CV^2 of the top-k counts over the experts the modality may use
  // (unbiased variance, as load_loss). Modalities never seen are left out.
  nlohmann::json summary_json() const;
  // One short line, e.g. "text: max-share 0.31 H 1.92 cv2 0.04 | image: max-share 0.55 H 1.40 cv2 0.61".
  std::string summary() const;

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
