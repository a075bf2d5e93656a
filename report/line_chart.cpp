#include "report/line_chart.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <opencv2/imgproc.hpp>

#include "report/chart_draw.h"

namespace mole {

using namespace chart;

// ---- line chart --------------------------------------------------------------------------------------------------

cv::Mat draw_lines(const LinePlot& plot) {
  const std::string what = "line plot '" + plot.title + "'";
  if (plot.series.empty()) fail(what, "no series");
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  std::vector<std::string> names;
  std::vector<cv::Scalar> colors;
  for (size_t s = 0; s < plot.series.size(); ++s) {
    const Series& ser = plot.series[s];
    if (ser.x.size() != ser.y.size())
      fail(what, "series '" + ser.name + "' has " + std::to_string(ser.x.size()) + " x values and " +
                     std::to_string(ser.y.size()) + " y values");
    const bool band = !ser.lo.empty() || !ser.hi.empty();
    if (band && (ser.lo.size() != ser.x.size() || ser.hi.size() != ser.x.size()))
      fail(what, "series '" + ser.name + "' has a band of " + std::to_string(ser.lo.size()) + " / " +
                     std::to_string(ser.hi.size()) + " values for " + std::to_string(ser.x.size()) + " points");
    for (size_t i = 0; i < ser.x.size(); ++i) {
      if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) continue;
      x0 = std::min(x0, ser.x[i]), x1 = std::max(x1, ser.x[i]);
      y0 = std::min(y0, ser.y[i]), y1 = std::max(y1, ser.y[i]);
      if (band && std::isfinite(ser.lo[i]) && std::isfinite(ser.hi[i]))
        y0 = std::min(y0, ser.lo[i]), y1 = std::max(y1, ser.hi[i]);
    }
    names.push_back(ser.name);
    colors.push_back(ser.color[0] < 0 ? category_color(int(s)) : ser.color);
  }
  if (!(x1 >= x0)) fail(what, "no finite points in any series");
  double pad = (y1 - y0) * 0.05;
  y0 = std::isnan(plot.y_min) ? y0 - pad : plot.y_min;
  y1 = std::isnan(plot.y_max) ? y1 + pad : plot.y_max;
  if (std::isnan(plot.y_min) && y0 < 0 && y0 + pad >= 0) y0 = 0;  // do not dip below 0 only for the margin
  nice_range(x0, x1, 8);
  nice_range(y0, y1, 6);

  // Layout: title | (y label, y ticks, plot, legend) | x ticks, x label.
  int height = std::max(plot.height, 240);
  int top = 44, bottom = 56;
  int legend_h = height - top - bottom;
  cv::Size legend = legend_size(names, legend_h);
  int left = 34 + value_axis_width(y0, y1, 6) + 10;
  int width = std::max(plot.width, left + 200 + legend.width + 30);
  cv::Rect area(left, top, width - left - legend.width - 40, height - top - bottom);
  cv::Mat img(height, width, CV_8UC3, kWhite);

  put_text(img, fit_text(plot.title, width - 20, kTitle), {width / 2, 20}, kTitle, HAlign::kCenter, kInk, 2);
  draw_value_axis(img, area, y0, y1, 6);
  double step = 0;
  for (double v : nice_ticks(x0, x1, 8, &step)) {
    int x = area.x + int(std::lround((v - x0) / (x1 - x0) * area.width));
    cv::line(img, {x, area.y}, {x, area.y + area.height}, kGrid, 1);
    cv::line(img, {x, area.y + area.height}, {x, area.y + area.height + 4}, kInk, 1);
    put_text(img, format_tick(v, step), {x, area.y + area.height + 14}, kSmall, HAlign::kCenter);
  }
  cv::rectangle(img, area, kInk, 1);
  put_text(img, plot.x_label, {area.x + area.width / 2, height - 16}, kAxis, HAlign::kCenter);
  put_text_vertical(img, plot.y_label, {14, area.y + area.height / 2}, kAxis);

  auto to_px = [&](double x, double y) {
    return cv::Point(area.x + int(std::lround((x - x0) / (x1 - x0) * area.width)),
                     area.y + area.height - int(std::lround((y - y0) / (y1 - y0) * area.height)));
  };
  const cv::Rect frame(area.x, area.y, area.width + 1, area.height + 1);
  // Bands first, under every line: each series' area between lo and hi, blended at 25% over the background.
  for (size_t s = 0; s < plot.series.size(); ++s) {
    const Series& ser = plot.series[s];
    if (ser.lo.empty()) continue;
    cv::Mat layer = img.clone();
    for (size_t i = 0; i + 1 < ser.x.size(); ++i) {
      const size_t j = i + 1;
      if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.x[j]) || !std::isfinite(ser.lo[i]) ||
          !std::isfinite(ser.hi[i]) || !std::isfinite(ser.lo[j]) || !std::isfinite(ser.hi[j]))
        continue;
      std::vector<cv::Point> quad = {to_px(ser.x[i], ser.lo[i]), to_px(ser.x[j], ser.lo[j]),
                                     to_px(ser.x[j], ser.hi[j]), to_px(ser.x[i], ser.hi[i])};
      cv::fillConvexPoly(layer, quad, colors[s], cv::LINE_AA);
    }
    cv::Mat inside = img(frame);
    cv::addWeighted(layer(frame), 0.25, inside, 0.75, 0.0, inside);
  }
  for (size_t s = 0; s < plot.series.size(); ++s) {
    const Series& ser = plot.series[s];
    bool markers = plot.markers && ser.x.size() <= 60;
    bool have_prev = false;
    cv::Point prev;
    for (size_t i = 0; i < ser.x.size(); ++i) {
      if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) { have_prev = false; continue; }
      cv::Point p = to_px(ser.x[i], ser.y[i]), a = prev, b = p;
      // Points outside a y range the caller fixed are cut off at the frame (its right and bottom edges included).
      if (have_prev && cv::clipLine(frame, a, b)) cv::line(img, a, b, colors[s], 2, cv::LINE_AA);
      if (markers && frame.contains(p)) cv::circle(img, p, 3, colors[s], cv::FILLED, cv::LINE_AA);
      prev = p, have_prev = true;
    }
  }
  draw_legend(img, {area.x + area.width + 20, area.y}, names, colors, legend_h, /*lines=*/true);
  return img;
}

void plot_lines(const std::string& path, const LinePlot& plot) {
  write_png(path, drawn_for(path, [&] { return draw_lines(plot); }));
}

}  // namespace mole
