// Bar charts: stacked bars (the expert mix per layer) and grouped bars (a value per layer and modality) (report/chart.h: what every chart kind shares).
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

#include "report/chart.h"

namespace mole {

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


}  // namespace mole
