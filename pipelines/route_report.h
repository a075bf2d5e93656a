// The routing report: what the MoLE routers did, as pictures, numbers and one HTML page (MOE.md "What the routing
// statistics should show": per layer, expert and modality the top-1 and top-k shares, the router entropy, and how
// the load moved during training; collapse and modality specialisation visible at a glance). The figures follow the
// routing analyses of LLaVA-MoLE (Chen et al. 2024, arXiv:2401.16160: per-layer expert load of image vs text tokens)
// and MoE-LLaVA (Lin et al. 2024, arXiv:2401.15947: expert loading and modality mix per layer, token pathways).
//
// Inputs: a RoutingStats::to_json() table (moe/routing_stats.h), optionally the trainer's metrics log (JSON Lines;
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

#include "pipelines/plots.h"

namespace mole {

// ---- HTML, shared with other reports (e.g. the demo's accuracy table and loss curves) -----------------------------

struct HtmlFigure {
  std::string src;      // relative path of the image
  std::string caption;  // plain text
};

struct HtmlTable {
  explicit HtmlTable(std::string caption = "", std::vector<std::string> header = {})
      : caption(std::move(caption)), header(std::move(header)) {}
  std::string caption;                         // plain text, may be empty
  std::vector<std::string> header;             // column names
  std::vector<std::vector<std::string>> rows;  // cells, plain text; each row as long as the header
};

struct HtmlSection {
  explicit HtmlSection(std::string heading = "", std::string text = "")
      : heading(std::move(heading)), text(std::move(text)) {}
  std::string heading;
  std::string text;  // plain text; a blank line starts a new paragraph
  std::vector<HtmlFigure> figures;
  std::vector<HtmlTable> tables;
};

std::string html_escape(const std::string& text);
// A self-contained page (inline CSS, no scripts): the title, a line under it, then the sections in order.
std::string html_page(const std::string& title, const std::vector<HtmlSection>& sections,
                      const std::string& subtitle = "");
// Writes text to path; throws std::runtime_error naming the file when it cannot.
void write_text_file(const std::string& path, const std::string& text);

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
};

// Reads the lines of a JSON Lines metrics log that carry "expert_load" (others are skipped). Throws naming the file
// and line when the file cannot be read, a line is not JSON, or the expert_load block is malformed.
ExpertLoadHistory read_expert_load_log(const std::string& path);

// Short labels for layer names: the dot-separated parts every name shares at the start and end are dropped and a
// leading layer number becomes "L<n>" ("language_model.model.layers.3.mlp" -> "L3"); full names if that collides.
std::vector<std::string> short_layer_names(const std::vector<std::string>& names);

// ---- the report --------------------------------------------------------------------------------------------------

struct RouteReportOptions {
  std::string title = "Expert routing";
  /// prefill | generate | both (both: the two phases pooled, token-weighted, as RoutingStats::summary_json does).
  std::string phase = "prefill";
  /// A metrics log (JSON Lines) with expert_load lines; empty: no load-over-training figures.
  std::string metrics_log;
  std::vector<PatchGrid> patch_grids;
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
RouteReport write_route_report(const std::string& out_dir, const nlohmann::json& stats,
                               const RouteReportOptions& options = {});

}  // namespace mole
