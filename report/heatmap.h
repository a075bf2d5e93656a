// Heat maps: a value per (row, column) cell on a sequential colour scale, e.g. layer x expert shares (report/chart.h: what every chart kind shares).
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

#include "report/chart.h"

namespace mole {

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


}  // namespace mole
