// Small chart drawing with OpenCV (core/imgproc/imgcodecs only; text in Hershey fonts): line charts, heat maps,
// stacked and grouped bar charts, and image patches tinted by a label. Enough to draw routing figures in the manner
// of LLaVA-MoLE (Chen et al. 2024, arXiv:2401.16160: expert load per layer for image and text tokens) and MoE-LLaVA
// (Lin et al. 2024, arXiv:2401.15947: expert loading and the modality mix per expert and layer, the experts that
// tokens pass through), which show expert collapse and modality specialisation, and the demo's loss curves,
// without a Python or plotting dependency.
//
// Every plot_* draws with the matching draw_* and writes a PNG; every error (empty data, lengths that do not agree,
// a file that cannot be written) is a std::runtime_error that names the file and what is wrong. Colours are BGR
// (OpenCV's order). Missing values are NaN: a line breaks there, a heat-map cell is drawn grey, a bar is left out.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

namespace mole {

// ---- colours ---------------------------------------------------------------------------------------------------

// Colour of category i (e.g. expert i), the same whatever the number of categories, so expert 2 has one colour in
// every figure: Tableau-10 for 0..9, their lighter Tableau-20 partners for 10..19, then hues stepped by the golden
// angle with alternating brightness (distinct neighbours, still usable for 64 experts).
cv::Scalar category_color(int i);
std::vector<cv::Scalar> categorical_palette(int n);  // category_color(0..n-1)

// The sequential scale of the heat maps (viridis: dark blue at 0, yellow at 1); t is clamped to [0, 1].
cv::Scalar scale_color(double t);

// ---- line chart ------------------------------------------------------------------------------------------------

struct Series {
  std::string name;          // legend entry
  std::vector<double> x, y;  // same length; NaN y breaks the line
  cv::Scalar color{-1, -1, -1};  // < 0: category_color(index of the series)
};

struct LinePlot {
  explicit LinePlot(std::string title = "", std::string x_label = "", std::string y_label = "")
      : title(std::move(title)), x_label(std::move(x_label)), y_label(std::move(y_label)) {}
  std::string title, x_label, y_label;
  std::vector<Series> series;
  double y_min = NAN, y_max = NAN;  // NaN: from the data (with a margin)
  bool markers = true;              // a dot on each point (dropped when a series has many points)
  int width = 960, height = 540;
};

cv::Mat draw_lines(const LinePlot& plot);
void plot_lines(const std::string& path, const LinePlot& plot);

// ---- heat map --------------------------------------------------------------------------------------------------

struct Heatmap {
  explicit Heatmap(std::string title = "", std::string row_axis = "", std::string col_axis = "")
      : title(std::move(title)), row_axis(std::move(row_axis)), col_axis(std::move(col_axis)) {}
  std::string title, row_axis, col_axis;               // e.g. "layer", "expert"
  std::vector<std::string> row_names, col_names;       // row r, column c
  std::vector<std::vector<double>> values;             // (rows, cols); NaN = no value (grey cell)
  double v_min = 0.0, v_max = NAN;                     // colour-scale range; NaN v_max: the largest value
  std::string value_format = "%.2f";                   // printf format of the numbers in cells and on the scale
  int max_width = 2400, max_height = 2400;             // the image stays within this
};

// Where plot_heatmap put things, so a caller (or a test) can find a cell: cells[r][c] is the filled rectangle of
// value (r, c), fill_point(r, c) a pixel of plain fill colour in it (away from the number written at the centre).
struct HeatmapGeometry {
  cv::Size image;
  cv::Rect grid;                              // all cells
  std::vector<std::vector<cv::Rect>> cells;   // (rows, cols)
  cv::Rect scale_bar;                         // the colour bar (v_max at its top)
  double v_min = 0.0, v_max = 1.0;            // the range the colours were drawn with
  bool numbers_in_cells = false;
  cv::Point fill_point(int r, int c) const;
};

cv::Mat draw_heatmap(const Heatmap& h, HeatmapGeometry* geometry = nullptr);
HeatmapGeometry plot_heatmap(const std::string& path, const Heatmap& h);

// ---- bar charts ------------------------------------------------------------------------------------------------

// One cluster of bars per group (e.g. per layer), within it one bar per bar_name (e.g. "text", "image"), each bar
// a stack of segments (e.g. the share of each expert). values[g][b] is bar b of group g, one value per segment;
// an empty vector leaves the bar out (e.g. a layer that saw no image tokens).
struct StackedBars {
  explicit StackedBars(std::string title = "", std::string group_axis = "", std::string value_axis = "")
      : title(std::move(title)), group_axis(std::move(group_axis)), value_axis(std::move(value_axis)) {}
  std::string title, group_axis, value_axis;
  std::vector<std::string> group_names, bar_names, segment_names;
  std::vector<std::vector<std::vector<double>>> values;  // (groups, bars, segments)
  double v_max = NAN;                                    // NaN: the tallest stack
  int max_width = 2400, height = 560;
};

cv::Mat draw_stacked_bars(const StackedBars& b);
void plot_stacked_bars(const std::string& path, const StackedBars& b);

// Side by side bars: per group (e.g. layer) one bar per series (e.g. modality). values[g][s]; NaN leaves it out.
// Horizontal reference lines (e.g. the entropy of a uniform router, ln E) are drawn dashed and labelled.
struct RefLine {
  std::string name;
  double value = 0.0;
};

struct GroupedBars {
  explicit GroupedBars(std::string title = "", std::string group_axis = "", std::string value_axis = "")
      : title(std::move(title)), group_axis(std::move(group_axis)), value_axis(std::move(value_axis)) {}
  std::string title, group_axis, value_axis;
  std::vector<std::string> group_names, series_names;
  std::vector<std::vector<double>> values;  // (groups, series)
  std::vector<RefLine> ref_lines;
  std::vector<cv::Scalar> series_colors;    // empty: category_color(s)
  double v_max = NAN;                       // NaN: from the data and the reference lines
  int max_width = 2400, height = 480;
};

cv::Mat draw_grouped_bars(const GroupedBars& b);
void plot_grouped_bars(const std::string& path, const GroupedBars& b);

// ---- image patches tinted by label -----------------------------------------------------------------------------

// An image cut into grid_h x grid_w patches (a ViT's patch grid), each patch tinted with the colour of its label
// (e.g. the expert its token's router chose first); label -1 leaves the patch untinted.
struct PatchOverlay {
  cv::Mat image_rgb;            // 8-bit RGB (3 channels) or grey (1 channel), any size
  int grid_h = 0, grid_w = 0;
  std::vector<int> labels;      // grid_h * grid_w, row-major
  std::string title;
  std::string label_name = "expert";   // legend: "expert 3"
  int side = 336;                      // the longer side of the drawn image, in pixels (rounded to whole cells)
};

constexpr double kPatchTintAlpha = 0.45;  // pixel = (1 - alpha) * image + alpha * label colour

struct PatchOverlayGeometry {
  cv::Rect image_area;           // where the scaled image lies
  std::vector<cv::Rect> cells;   // grid_h * grid_w, row-major
};

cv::Mat draw_patch_overlay(const PatchOverlay& p, PatchOverlayGeometry* geometry = nullptr);
PatchOverlayGeometry plot_patch_overlay(const std::string& path, const PatchOverlay& p);

// Writes a BGR image as PNG; throws naming the file when it cannot (missing folder, not writable, bad extension).
void write_png(const std::string& path, const cv::Mat& bgr);

}  // namespace mole
