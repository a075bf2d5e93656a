// Drawing helpers shared by the chart kinds (report/line_chart, heatmap, bar_chart, patch_overlay): text in
// Hershey fonts, value axes with nice ticks, legends, error prefixes. Layout in pixels: every chart is a title
// band on top, a plot area, axis labels left and below, and a legend on the right laid out in as many columns as
// the height needs; sizes adapt to the number of rows, columns, groups and series so that 1 or 64 experts and 1
// or 40 layers stay readable. Internal to report/: other code includes the chart headers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "report/chart.h"

namespace mole::chart {

// ---- text --------------------------------------------------------------------------------------------------------

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kSmall = 0.42;  // ticks, labels, legend (about 9 px tall)
constexpr double kAxis = 0.5;    // axis names
constexpr double kTitle = 0.65;  // the title (drawn 2 px thick)
const cv::Scalar kInk(40, 40, 40), kGrid(225, 225, 225), kWhite(255, 255, 255), kMissing(205, 205, 205);

enum class HAlign { kLeft, kCenter, kRight };

inline cv::Size text_size(const std::string& s, double scale, int thickness = 1) {
  int baseline = 0;
  return cv::getTextSize(s, kFont, scale, thickness, &baseline);
}

// Draws s with its vertical middle at anchor.y, aligned on anchor.x as asked.
inline void put_text(cv::Mat& img, const std::string& s, cv::Point anchor, double scale, HAlign align = HAlign::kLeft,
              const cv::Scalar& color = kInk, int thickness = 1) {
  cv::Size size = text_size(s, scale, thickness);
  int x = align == HAlign::kLeft     ? anchor.x
          : align == HAlign::kCenter ? anchor.x - size.width / 2
                                     : anchor.x - size.width;
  cv::putText(img, s, {x, anchor.y + size.height / 2}, kFont, scale, color, thickness, cv::LINE_AA);
}

// Text turned 90 degrees counter-clockwise (reading upwards), centred on center: drawn into a mask, rotated, blended.
inline void put_text_vertical(cv::Mat& img, const std::string& s, cv::Point center, double scale,
                       const cv::Scalar& color = kInk) {
  int baseline = 0;
  cv::Size size = cv::getTextSize(s, kFont, scale, 1, &baseline);
  cv::Mat mask(size.height + baseline + 2, size.width + 2, CV_8UC1, cv::Scalar(0));
  cv::putText(mask, s, {1, size.height + 1}, kFont, scale, cv::Scalar(255), 1, cv::LINE_AA);
  cv::rotate(mask, mask, cv::ROTATE_90_COUNTERCLOCKWISE);
  cv::Rect where(center.x - mask.cols / 2, center.y - mask.rows / 2, mask.cols, mask.rows);
  cv::Rect clipped = where & cv::Rect(0, 0, img.cols, img.rows);
  for (int y = clipped.y; y < clipped.y + clipped.height; ++y)
    for (int x = clipped.x; x < clipped.x + clipped.width; ++x) {
      double a = mask.at<uint8_t>(y - where.y, x - where.x) / 255.0;
      auto& p = img.at<cv::Vec3b>(y, x);
      for (int c = 0; c < 3; ++c) p[c] = cv::saturate_cast<uint8_t>(p[c] * (1 - a) + color[c] * a);
    }
}

// s shortened in the middle ("language_mo..layers.3.mlp") until it is at most max_width pixels wide: the ends of a
// layer name (the model part, the layer number) say the most.
inline std::string fit_text(const std::string& s, int max_width, double scale) {
  if (text_size(s, scale).width <= max_width) return s;
  std::string head = s.substr(0, s.size() / 3), tail = s.substr(s.size() / 3);
  while (!tail.empty() && text_size(head + ".." + tail, scale).width > max_width) {
    if (head.size() * 2 > tail.size()) head.pop_back();
    else tail.erase(0, 1);
  }
  return head + ".." + tail;
}

inline int max_text_width(const std::vector<std::string>& names, double scale) {
  int w = 0;
  for (const auto& n : names) w = std::max(w, text_size(n, scale).width);
  return w;
}

inline std::string format_value(const std::string& format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format.c_str(), v);
  return buf;
}

// ---- axes ----------------------------------------------------------------------------------------------------

// "Nice" tick values (steps of 1, 2 or 5 times a power of ten), about `target` of them, covering [lo, hi].
inline std::vector<double> nice_ticks(double lo, double hi, int target, double* step_out = nullptr) {
  double raw = (hi - lo) / std::max(1, target);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double norm = raw / mag;
  double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  std::vector<double> ticks;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step)
    ticks.push_back(std::abs(v) < step * 1e-9 ? 0.0 : v);
  if (step_out) *step_out = step;
  return ticks;
}

// Tick labels with as many decimals as the step needs; large steps in k or M (training steps: 200k, 1.2M), tiny
// ones in e-notation.
inline std::string format_tick(double v, double step) {
  if (step < 1e-4) return format_value("%.3g", v);
  double unit = step >= 1e5 ? 1e6 : step >= 1e4 ? 1e3 : 1.0;
  int decimals = std::max(0, int(-std::floor(std::log10(step / unit) + 1e-9)));
  std::string suffix = unit == 1e6 ? "M" : unit == 1e3 ? "k" : "";
  return format_value("%." + std::to_string(decimals) + "f", v / unit) + (v != 0 ? suffix : "");
}

// A data range widened to whole nice steps; a flat range gets a unit around it.
inline void nice_range(double& lo, double& hi, int target) {
  if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
  double step = 0;
  nice_ticks(lo, hi, target, &step);
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
}

// A value axis on the left of `area` (lo at its bottom): grid lines, ticks and numbers.
inline void draw_value_axis(cv::Mat& img, const cv::Rect& area, double lo, double hi, int target) {
  double step = 0;
  for (double v : nice_ticks(lo, hi, target, &step)) {
    int y = area.y + area.height - int(std::lround((v - lo) / (hi - lo) * area.height));
    cv::line(img, {area.x, y}, {area.x + area.width, y}, kGrid, 1);
    cv::line(img, {area.x - 4, y}, {area.x, y}, kInk, 1);
    put_text(img, format_tick(v, step), {area.x - 7, y}, kSmall, HAlign::kRight);
  }
}

inline int value_axis_width(double lo, double hi, int target) {
  double step = 0;
  int w = 0;
  for (double v : nice_ticks(lo, hi, target, &step)) w = std::max(w, text_size(format_tick(v, step), kSmall).width);
  return w;
}

// ---- legend --------------------------------------------------------------------------------------------------

constexpr int kLegendRow = 17, kSwatch = 12, kLegendText = 240;  // px: row height, swatch side, widest name

// The size of a legend of these entries laid out in columns no taller than max_height.
inline cv::Size legend_size(const std::vector<std::string>& names, int max_height) {
  if (names.empty()) return {0, 0};
  int rows = std::max(1, std::min(int(names.size()), max_height / kLegendRow));
  int cols = (int(names.size()) + rows - 1) / rows;
  return {cols * (kSwatch + 8 + std::min(max_text_width(names, kSmall), kLegendText) + 14), rows * kLegendRow};
}

// Colour swatches (or short line segments) with names, column after column from `origin`.
inline void draw_legend(cv::Mat& img, cv::Point origin, const std::vector<std::string>& names,
                 const std::vector<cv::Scalar>& colors, int max_height, bool lines = false) {
  if (names.empty()) return;
  cv::Size size = legend_size(names, max_height);
  int rows = size.height / kLegendRow, cols = (int(names.size()) + rows - 1) / rows, col_w = size.width / cols;
  for (size_t i = 0; i < names.size(); ++i) {
    cv::Point at(origin.x + int(i) / rows * col_w, origin.y + int(i) % rows * kLegendRow);
    if (lines)
      cv::line(img, {at.x, at.y + kSwatch / 2}, {at.x + kSwatch + 2, at.y + kSwatch / 2}, colors[i], 3, cv::LINE_AA);
    else
      cv::rectangle(img, cv::Rect(at.x, at.y, kSwatch, kSwatch), colors[i], cv::FILLED);
    put_text(img, fit_text(names[i], kLegendText, kSmall), {at.x + kSwatch + 8, at.y + kSwatch / 2}, kSmall);
  }
}

[[noreturn]] inline void fail(const std::string& what, const std::string& message) {
  throw std::runtime_error(what + ": " + message);
}

// draw(), with any error it throws prefixed by the file the picture was meant for.
template <typename Draw>
inline cv::Mat drawn_for(const std::string& path, Draw draw) {
  try {
    return draw();
  } catch (const std::runtime_error& e) {
    fail(path, e.what());
  }
}

// Draws with draw(&geometry) into a PNG at path; returns where things were put.
template <typename Geometry, typename Draw>
Geometry plot_with_geometry(const std::string& path, Draw draw) {
  Geometry geometry;
  write_png(path, drawn_for(path, [&] { return draw(&geometry); }));
  return geometry;
}

// Labels along a row of slots of width `slot` starting at x0: every k-th, so that the labels do not overlap.
inline void draw_slot_labels(cv::Mat& img, const std::vector<std::string>& names, int x0, int slot, int y, int max_w) {
  int w = std::min(max_text_width(names, kSmall), max_w) + 6;
  int every = std::max(1, (w + slot - 1) / std::max(1, slot));
  for (size_t i = 0; i < names.size(); i += every)
    put_text(img, fit_text(names[i], max_w, kSmall), {x0 + int(i) * slot + slot / 2, y}, kSmall, HAlign::kCenter);
}

}  // namespace mole::chart
