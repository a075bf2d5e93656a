// Line charts: series of (x, y) points, e.g. loss curves and expert load over training (report/chart.h: what every chart kind shares).
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

#include "report/chart.h"

namespace mole {

// ---- line chart ------------------------------------------------------------------------------------------------

struct Series {
  std::string name;          // legend entry
  std::vector<double> x, y;  // same length; NaN y breaks the line
  cv::Scalar color{-1, -1, -1};  // < 0: category_color(index of the series)
  std::vector<double> lo{}, hi{};  // optional band around the line (e.g. a 95% interval over seeds): empty, or
                                   // as long as x; drawn as a translucent area where both ends are finite
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


}  // namespace mole
