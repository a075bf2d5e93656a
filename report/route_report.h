// The routing report: what the MoLE routers did, as pictures, numbers and one HTML page (docs/MOE.md "What the
// routing statistics show": per layer, expert and modality the top-1 and top-k shares, the router entropy, and
// how the load moved during training; collapse and modality specialisation visible at a glance). The figures follow the
// routing analyses of LLaVA-MoLE (Chen et al. 2024, arXiv:2401.16160: per-layer expert load of image vs text tokens)
// and MoE-LLaVA (Lin et al. 2024, arXiv:2401.15947: expert loading and modality mix per layer, token pathways).
//
// Inputs: a RoutingTable (moe/routing_stats.h), optionally the trainer's metrics log (JSON Lines;
// lines with "step" and "expert_load" = {"layers": [names], MODALITY: [[top-k share per expert] per layer]}) and
// patch grids (the top expert of every image patch). Output folder: PNGs, routes.json (every number drawn) and
// index.html (relative links, so the folder can be copied or served as is).
//
// L=layers E=experts (may differ per layer) M=modalities S=logged steps
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "moe/routing_stats.h"
#include "report/charts.h"
#include "report/html.h"

namespace mole {

// ---- inputs ------------------------------------------------------------------------------------------------------

// The routing of one image's patches at one layer: the expert each patch token chose first.
struct PatchGrid {
  cv::Mat image_rgb;              // 8-bit RGB (or grey), any size; drawn scaled to the grid
  int grid_h = 0, grid_w = 0;     // the patch grid, e.g. 24 x 24 for CLIP ViT-L/14 at 336 px
  std::vector<int> top_expert;    // (grid_h * grid_w) row-major; -1 = none (e.g. a patch that was not routed)
  std::string layer, title;       // shown in the figure's title and caption
};

// Expert load over training, read from a metrics log: load[modality][layer][step] = top-k share per expert (E of
// that layer), NaN-filled where a logged line lacks the layer or modality.
struct ExpertLoadHistory {
  std::vector<int64_t> steps;                   // (S) in log order
  std::vector<std::string> layers;              // (L) in first-logged order
  std::vector<int> n_experts;                   // (L)
  std::map<std::string, std::vector<std::vector<std::vector<double>>>> load;  // modality -> (L, S, E)
  // What the top-1 expert says about the token, per layer over the same steps (NaN where a line has none):
  // expert_modality_mi (nats) and, when the data has task families, expert_family's normalised MI.
  std::map<std::string, std::vector<double>> modality_mi, family_nmi;  // layer -> (S)
  std::vector<std::string> families;                                   // the last logged family list
};

// Reads the lines of a JSON Lines metrics log that carry "expert_load" (others are skipped), with their
// expert_modality_mi and expert_family blocks. Throws naming the file
// and line when the file cannot be read, a line is not JSON, or the expert_load block is malformed.
ExpertLoadHistory read_expert_load_log(const std::string& path);

// Short labels for layer names: the dot-separated parts every name shares at the start and end are dropped and a
// leading layer number becomes "L<n>" ("language_model.model.layers.3.mlp" -> "L3"); full names if that collides.
std::vector<std::string> short_layer_names(const std::vector<std::string>& names);

// ---- the report --------------------------------------------------------------------------------------------------

struct RouteReportOptions {
  std::string title = "Expert routing";
  /// prefill | generate | both (both: the two phases pooled, token-weighted, as RoutingStats::summary_json does) |
  /// apart (the prefill figures, then the generate phase's as *_generate.png when it has tokens).
  std::string phase = "prefill";
  /// A metrics log (JSON Lines) with expert_load lines; empty: no load-over-training figures.
  std::string metrics_log;
  std::vector<PatchGrid> patch_grids;
  /// One table per task family (eval/routes.h by_family): the expert mix per family and the information the
  /// expert carries about the family beside the modality's; empty: the modality's alone.
  std::map<std::string, RoutingTable> by_family;
};

struct RouteReport {
  std::vector<std::string> pngs;  // every figure written, full paths, in page order
  std::string html, json;         // out_dir/index.html, out_dir/routes.json
  // Where the cells of the heat maps and patch overlays lie, by file name (e.g. "heat_top1_image.png").
  std::map<std::string, HeatmapGeometry> heatmaps;
  std::map<std::string, PatchOverlayGeometry> patches;
};

// Draws the figures into out_dir (created if needed; files of the same names are replaced): per modality heat maps
// layer x expert of the top-1 share, the top-k share (when top_k > 1) and the mean gate weight; the expert mix per
// layer (stacked bars, one bar per modality); the router entropy per layer and modality; the load over training
// when a metrics log is given; one overlay per patch grid. Then routes.json and index.html. The stats and the log
// are read before anything is written; errors are std::runtime_error saying what is wrong with which input.
RouteReport write_route_report(const std::string& out_dir, const RoutingTable& stats,
                               const RouteReportOptions& options = {});
// The same from RoutingTable::to_json()'s form (e.g. a routes.json written earlier); a malformed table is a
// std::runtime_error naming the layer and key.
RouteReport write_route_report(const std::string& out_dir, const nlohmann::json& stats,
                               const RouteReportOptions& options = {});

}  // namespace mole
