// Routing by task family while a run trains (Mixtral's routing-by-domain question, docs/MOE.md): for every MoLE
// layer of the language model, how many tokens of each family took each expert as their first choice, and from
// those counts the mutual information between expert and family. The trainer sets each micro-batch's token
// families (data/families.h) before its forward; each layer then adds one index_add on the routing's device, and
// nothing reaches the host until table().
//
// N=tokens E=experts F=families
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "moe/routing.h"

namespace mole {

// The counts of one logging window, on the host.
struct FamilyRoutingTable {
  std::vector<std::string> families;
  std::vector<std::string> layers;                     // first-recorded order
  std::vector<std::vector<std::vector<double>>> top1;  // [layer][family][expert]: tokens whose top-1 it is

  // {"families": [...], "layers": [...], "top1": [[[counts per expert] per family] per layer]}
  nlohmann::json to_json() const;
  // Reads to_json()'s form; malformed input is a std::runtime_error that starts with `what`.
  static FamilyRoutingTable from_json(const nlohmann::json& j, const std::string& what);
  // Adds another's counts (the ranks of a data-parallel run): the same families; layers only it has are taken
  // over, in its order after this one's.
  void merge(const FamilyRoutingTable& other);

  // What a metrics line carries: {"families": [...], "mean_nmi": mean over layers,
  //   "layers": {LAYER: {"tokens": n, "mi": nats, "nmi": mi / H(family), "share": [[top-1 share per expert]
  //   per family]}}}. A family without tokens in the window has a share row of nulls.
  nlohmann::json summary_json() const;
};

class FamilyRouting {
 public:
  explicit FamilyRouting(std::vector<std::string> families);

  // The family of each token the language model's next forwards route, in the order its MoLE layers see them
  // (flattened batch x sequence, or only the non-padding tokens, row-major, when packed); -1: not counted.
  void set_tokens(const torch::Tensor& family);
  // One routing decision of a language-model layer over set_tokens()'s tokens (their count is checked).
  void record(const std::string& layer, const Routing& r);

  FamilyRoutingTable table() const;  // the counts so far, copied to the host (one sync per layer)
  void reset();                      // forget the counts (the layers stay known)
  const std::vector<std::string>& families() const { return families_; }

 private:
  std::vector<std::string> families_;
  torch::Tensor tokens_;  // (N) int64, -1 remapped to F (a row that is never reported)
  std::vector<std::string> order_;
  std::unordered_map<std::string, torch::Tensor> counts_;  // (F + 1, E) float64 on the routing's device
};

}  // namespace mole
