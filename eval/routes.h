// Collecting what the routers of a trained MoLE model do on real samples: routing statistics over the prompts
// (and, when asked, the generated tokens) of a set of questions, and for a few images the top-1 expert of every
// image patch at one layer, ready for write_route_report (report/route_report.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/vqa_data.h"
#include "model/trained_model.h"
#include "report/route_report.h"

namespace mole {

struct RouteOptions {
  int64_t max_samples = 64;    // questions run through the model
  int64_t n_patch_images = 4;  // images drawn with their patch routing
  bool by_family = false;      // also one table per question category (task family), for routing by family
  bool generate = false;       // also route the generated tokens (phase "generate")
  int64_t max_new_tokens = 32;
  int64_t layer = -1;          // index into the routed layers for the patch pictures; -1: the middle one
  int64_t batch_size = 16;
  std::string image_dir;
};

struct RouteCollection {
  RoutingTable stats;                 // prompts (and generated tokens with `generate`)
  std::vector<PatchGrid> patch_grids;
  std::map<std::string, RoutingTable> by_family;  // with by_family: category -> its questions' routing
  int64_t n_samples = 0;
};

// Questions from a LLaVA question jsonl, or from a LLaVA conversation file (each record's first human turn,
// "<image>" removed, with its image).
std::vector<VqaQuestion> route_questions(const std::string& path);

RouteCollection collect_routes(TrainedModel& model, const std::vector<VqaQuestion>& questions,
                               const RouteOptions& options);

// The training metrics log beside a model folder: RUN/metrics.jsonl for RUN, RUN/final or RUN/checkpoints/X;
// "" when there is none.
std::string metrics_log_for(const std::string& model_path);

}  // namespace mole
