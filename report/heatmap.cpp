#include "report/heatmap.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <opencv2/imgproc.hpp>

#include "report/chart_draw.h"

namespace mole {

using namespace chart;

// ---- heat map ----------------------------------------------------------------------------------------------------

cv::Point HeatmapGeometry::fill_point(int r, int c) const {
  const cv::Rect& cell = cells.at(r).at(c);
  if (!numbers_in_cells) return {cell.x + cell.width / 2, cell.y + cell.height / 2};
  return {cell.x + std::min(3, cell.width / 4), cell.y + std::min(3, cell.height / 4)};
}

cv::Mat draw_heatmap(const Heatmap& h, HeatmapGeometry* geometry) {
  const std::string what = "heat map '" + h.title + "'";
  int rows = int(h.values.size());
  if (rows == 0) fail(what, "no rows");
  int cols = int(h.values[0].size());
  if (cols == 0) fail(what, "no columns");
  for (int r = 0; r < rows; ++r)
    if (int(h.values[r].size()) != cols)
      fail(what, "row " + std::to_string(r) + " has " + std::to_string(h.values[r].size()) + " values, row 0 has " +
                     std::to_string(cols));
  if (int(h.row_names.size()) != rows || int(h.col_names.size()) != cols)
    fail(what, std::to_string(h.row_names.size()) + " row names and " + std::to_string(h.col_names.size()) +
                   " column names for " + std::to_string(rows) + " x " + std::to_string(cols) + " values");
  HeatmapGeometry g;
  g.v_min = h.v_min;
  g.v_max = h.v_max;
  bool missing = false;
  if (std::isnan(g.v_max)) {
    g.v_max = -INFINITY;
    for (const auto& row : h.values)
      for (double v : row) g.v_max = std::isfinite(v) ? std::max(g.v_max, v) : g.v_max;
  }
  for (const auto& row : h.values)
    for (double v : row) missing = missing || !std::isfinite(v);
  if (!(g.v_max > g.v_min)) g.v_max = g.v_min + 1.0;

  // Cell size: wide enough for a number when the columns allow, else whatever divides the width.
  cv::Size number = text_size(format_value(h.value_format, g.v_max), kSmall);
  int row_label_w = std::min(max_text_width(h.row_names, kSmall), 180);
  int left = 34 + row_label_w + 10, right = 30 + 18 + 8 + number.width + 20, top = 46, bottom = 64;
  int avail_w = std::max(cols, h.max_width - left - right), avail_h = std::max(rows, h.max_height - top - bottom);
  int cell_w = std::clamp(avail_w / cols, 1, std::max(56, number.width + 12));
  int cell_h = std::clamp(avail_h / rows, 1, 32);
  g.numbers_in_cells = cell_w >= number.width + 6 && cell_h >= number.height + 8;
  int gap = cell_w >= 6 && cell_h >= 6 ? 1 : 0;  // white lines between cells when there is room
  g.grid = cv::Rect(left, top, cols * cell_w, rows * cell_h);
  int bar_h = std::max(g.grid.height, 120);
  g.scale_bar = cv::Rect(g.grid.x + g.grid.width + 30, top, 18, bar_h);
  int width = std::max(g.scale_bar.x + right - 30, text_size(h.title, kTitle, 2).width + 40);
  int height = top + std::max(g.grid.height + bottom + (missing ? 18 : 0), bar_h + 20);
  cv::Mat img(height, width, CV_8UC3, kWhite);
  g.image = img.size();

  put_text(img, h.title, {width / 2, 20}, kTitle, HAlign::kCenter, kInk, 2);
  g.cells.assign(rows, std::vector<cv::Rect>(cols));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      cv::Rect cell(g.grid.x + c * cell_w, g.grid.y + r * cell_h, cell_w - gap, cell_h - gap);
      double v = h.values[r][c];
      cv::Scalar fill = std::isfinite(v) ? scale_color((v - g.v_min) / (g.v_max - g.v_min)) : kMissing;
      cv::rectangle(img, cell, fill, cv::FILLED);
      g.cells[r][c] = cell;
      if (g.numbers_in_cells && std::isfinite(v)) {
        double luma = 0.114 * fill[0] + 0.587 * fill[1] + 0.299 * fill[2];
        put_text(img, format_value(h.value_format, v), {cell.x + cell.width / 2, cell.y + cell.height / 2}, kSmall,
                 HAlign::kCenter, luma > 140 ? kInk : kWhite);
      }
    }
  // Row labels on the left, column labels below, every k-th when the cells are smaller than the text.
  int every_row = std::max(1, (number.height + 6 + cell_h - 1) / cell_h);
  for (int r = 0; r < rows; r += every_row)
    put_text(img, fit_text(h.row_names[r], 180, kSmall), {left - 8, g.grid.y + r * cell_h + cell_h / 2}, kSmall,
             HAlign::kRight);
  draw_slot_labels(img, h.col_names, g.grid.x, cell_w, g.grid.y + g.grid.height + 12, 80);
  put_text(img, h.col_axis, {g.grid.x + g.grid.width / 2, g.grid.y + g.grid.height + 38}, kAxis, HAlign::kCenter);
  put_text_vertical(img, h.row_axis, {14, g.grid.y + g.grid.height / 2}, kAxis);

  // Colour bar: v_max at the top, labelled at nice values and at v_max itself (unless a tick is close by).
  const cv::Rect& bar = g.scale_bar;
  for (int y = 0; y < bar.height; ++y)
    cv::line(img, {bar.x, bar.y + y}, {bar.x + bar.width - 1, bar.y + y},
             scale_color(1.0 - double(y) / std::max(1, bar.height - 1)), 1);
  cv::rectangle(img, bar, kInk, 1);
  auto bar_y = [&](double v) {
    return bar.y + bar.height - 1 - int(std::lround((v - g.v_min) / (g.v_max - g.v_min) * (bar.height - 1)));
  };
  double step = 0;
  int top_tick = bar.y + bar.height;
  for (double v : nice_ticks(g.v_min, g.v_max, 4, &step)) {
    put_text(img, format_tick(v, step), {bar.x + bar.width + 6, bar_y(v)}, kSmall);
    top_tick = bar_y(v);
  }
  if (top_tick - bar.y >= 14) put_text(img, format_value("%.3g", g.v_max), {bar.x + bar.width + 6, bar.y}, kSmall);
  if (missing) {
    cv::Point at(g.grid.x, g.grid.y + g.grid.height + bottom);
    cv::rectangle(img, cv::Rect(at.x, at.y - 6, 12, 12), kMissing, cv::FILLED);
    put_text(img, "no value", {at.x + 18, at.y}, kSmall);
  }
  if (geometry) *geometry = g;
  return img;
}

HeatmapGeometry plot_heatmap(const std::string& path, const Heatmap& h) {
  return plot_with_geometry<HeatmapGeometry>(path, [&](HeatmapGeometry* g) { return draw_heatmap(h, g); });
}

}  // namespace mole
