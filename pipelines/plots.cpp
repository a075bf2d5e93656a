// Chart drawing for the routing report and the demo (see plots.h). Layout in pixels: every chart is a title band
// on top, a plot area, axis labels left and below, and a legend on the right laid out in as many columns as the
// height needs; sizes adapt to the number of rows, columns, groups and series so that 1 or 64 experts and 1 or 40
// layers stay readable and within max_width x max_height.
#include "pipelines/plots.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace mole {

namespace {

// ---- text --------------------------------------------------------------------------------------------------------

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kSmall = 0.42;  // ticks, labels, legend (about 9 px tall)
constexpr double kAxis = 0.5;    // axis names
constexpr double kTitle = 0.65;  // the title (drawn 2 px thick)
const cv::Scalar kInk(40, 40, 40), kGrid(225, 225, 225), kWhite(255, 255, 255), kMissing(205, 205, 205);

enum class HAlign { kLeft, kCenter, kRight };

cv::Size text_size(const std::string& s, double scale, int thickness = 1) {
  int baseline = 0;
  return cv::getTextSize(s, kFont, scale, thickness, &baseline);
}

// Draws s with its vertical middle at anchor.y, aligned on anchor.x as asked.
void put_text(cv::Mat& img, const std::string& s, cv::Point anchor, double scale, HAlign align = HAlign::kLeft,
              const cv::Scalar& color = kInk, int thickness = 1) {
  cv::Size size = text_size(s, scale, thickness);
  int x = align == HAlign::kLeft     ? anchor.x
          : align == HAlign::kCenter ? anchor.x - size.width / 2
                                     : anchor.x - size.width;
  cv::putText(img, s, {x, anchor.y + size.height / 2}, kFont, scale, color, thickness, cv::LINE_AA);
}

// Text turned 90 degrees counter-clockwise (reading upwards), centred on center: drawn into a mask, rotated, blended.
void put_text_vertical(cv::Mat& img, const std::string& s, cv::Point center, double scale,
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
std::string fit_text(const std::string& s, int max_width, double scale) {
  if (text_size(s, scale).width <= max_width) return s;
  std::string head = s.substr(0, s.size() / 3), tail = s.substr(s.size() / 3);
  while (!tail.empty() && text_size(head + ".." + tail, scale).width > max_width) {
    if (head.size() * 2 > tail.size()) head.pop_back();
    else tail.erase(0, 1);
  }
  return head + ".." + tail;
}

int max_text_width(const std::vector<std::string>& names, double scale) {
  int w = 0;
  for (const auto& n : names) w = std::max(w, text_size(n, scale).width);
  return w;
}

std::string format_value(const std::string& format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format.c_str(), v);
  return buf;
}

// ---- axes ----------------------------------------------------------------------------------------------------

// "Nice" tick values (steps of 1, 2 or 5 times a power of ten), about `target` of them, covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int target, double* step_out = nullptr) {
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
std::string format_tick(double v, double step) {
  if (step < 1e-4) return format_value("%.3g", v);
  double unit = step >= 1e5 ? 1e6 : step >= 1e4 ? 1e3 : 1.0;
  int decimals = std::max(0, int(-std::floor(std::log10(step / unit) + 1e-9)));
  std::string suffix = unit == 1e6 ? "M" : unit == 1e3 ? "k" : "";
  return format_value("%." + std::to_string(decimals) + "f", v / unit) + (v != 0 ? suffix : "");
}

// A data range widened to whole nice steps; a flat range gets a unit around it.
void nice_range(double& lo, double& hi, int target) {
  if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
  double step = 0;
  nice_ticks(lo, hi, target, &step);
  lo = std::floor(lo / step + 1e-9) * step;
  hi = std::ceil(hi / step - 1e-9) * step;
}

// A value axis on the left of `area` (lo at its bottom): grid lines, ticks and numbers.
void draw_value_axis(cv::Mat& img, const cv::Rect& area, double lo, double hi, int target) {
  double step = 0;
  for (double v : nice_ticks(lo, hi, target, &step)) {
    int y = area.y + area.height - int(std::lround((v - lo) / (hi - lo) * area.height));
    cv::line(img, {area.x, y}, {area.x + area.width, y}, kGrid, 1);
    cv::line(img, {area.x - 4, y}, {area.x, y}, kInk, 1);
    put_text(img, format_tick(v, step), {area.x - 7, y}, kSmall, HAlign::kRight);
  }
}

int value_axis_width(double lo, double hi, int target) {
  double step = 0;
  int w = 0;
  for (double v : nice_ticks(lo, hi, target, &step)) w = std::max(w, text_size(format_tick(v, step), kSmall).width);
  return w;
}

// ---- legend --------------------------------------------------------------------------------------------------

constexpr int kLegendRow = 17, kSwatch = 12, kLegendText = 240;  // px: row height, swatch side, widest name

// The size of a legend of these entries laid out in columns no taller than max_height.
cv::Size legend_size(const std::vector<std::string>& names, int max_height) {
  if (names.empty()) return {0, 0};
  int rows = std::max(1, std::min(int(names.size()), max_height / kLegendRow));
  int cols = (int(names.size()) + rows - 1) / rows;
  return {cols * (kSwatch + 8 + std::min(max_text_width(names, kSmall), kLegendText) + 14), rows * kLegendRow};
}

// Colour swatches (or short line segments) with names, column after column from `origin`.
void draw_legend(cv::Mat& img, cv::Point origin, const std::vector<std::string>& names,
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

[[noreturn]] void fail(const std::string& what, const std::string& message) {
  throw std::runtime_error(what + ": " + message);
}

// draw(), with any error it throws prefixed by the file the picture was meant for.
template <typename Draw>
cv::Mat drawn_for(const std::string& path, Draw draw) {
  try {
    return draw();
  } catch (const std::runtime_error& e) {
    fail(path, e.what());
  }
}

// Labels along a row of slots of width `slot` starting at x0: every k-th, so that the labels do not overlap.
void draw_slot_labels(cv::Mat& img, const std::vector<std::string>& names, int x0, int slot, int y, int max_w) {
  int w = std::min(max_text_width(names, kSmall), max_w) + 6;
  int every = std::max(1, (w + slot - 1) / std::max(1, slot));
  for (size_t i = 0; i < names.size(); i += every)
    put_text(img, fit_text(names[i], max_w, kSmall), {x0 + int(i) * slot + slot / 2, y}, kSmall, HAlign::kCenter);
}

}  // namespace

// ---- colours -----------------------------------------------------------------------------------------------------

cv::Scalar category_color(int i) {
  // Tableau 10 and the lighter Tableau 20 partners, as RGB.
  static const int kRgb[20][3] = {{31, 119, 180},  {255, 127, 14},  {44, 160, 44},   {214, 39, 40},   {148, 103, 189},
                                  {140, 86, 75},   {227, 119, 194}, {127, 127, 127}, {188, 189, 34},  {23, 190, 207},
                                  {174, 199, 232}, {255, 187, 120}, {152, 223, 138}, {255, 152, 150}, {197, 176, 213},
                                  {196, 156, 148}, {247, 182, 210}, {199, 199, 199}, {219, 219, 141}, {158, 218, 229}};
  if (i < 0) return kMissing;
  if (i < 20) return cv::Scalar(kRgb[i][2], kRgb[i][1], kRgb[i][0]);
  // Golden-angle hue steps; value and saturation alternate so that neighbours differ in brightness too.
  cv::Mat hsv(1, 1, CV_8UC3, cv::Scalar(std::fmod((i - 20) * 137.508 + 15.0, 360.0) / 2.0, i % 2 ? 150 : 220,
                                        i % 3 == 0 ? 150 : 215));
  cv::Mat bgr;
  cv::cvtColor(hsv, bgr, cv::COLOR_HSV2BGR);
  auto p = bgr.at<cv::Vec3b>(0, 0);
  return cv::Scalar(p[0], p[1], p[2]);
}

std::vector<cv::Scalar> categorical_palette(int n) {
  std::vector<cv::Scalar> out;
  for (int i = 0; i < n; ++i) out.push_back(category_color(i));
  return out;
}

cv::Scalar scale_color(double t) {
  static const cv::Mat lut = [] {
    cv::Mat ramp(1, 256, CV_8UC1), colored;
    for (int i = 0; i < 256; ++i) ramp.at<uint8_t>(0, i) = uint8_t(i);
    cv::applyColorMap(ramp, colored, cv::COLORMAP_VIRIDIS);
    return colored;
  }();
  int i = std::isfinite(t) ? int(std::lround(std::clamp(t, 0.0, 1.0) * 255)) : 0;
  auto p = lut.at<cv::Vec3b>(0, i);
  return cv::Scalar(p[0], p[1], p[2]);
}

void write_png(const std::string& path, const cv::Mat& bgr) {
  std::string ext = path.size() >= 4 ? path.substr(path.size() - 4) : "";
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (ext != ".png") fail(path, "not a .png file name");
  if (bgr.empty()) fail(path, "nothing to write (empty image)");
  bool ok = false;
  try {
    ok = cv::imwrite(path, bgr);
  } catch (const cv::Exception& e) {
    fail(path, std::string("cannot write PNG: ") + e.what());
  }
  if (!ok) fail(path, "cannot write PNG (does the folder exist, is it writable?)");
}

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
    for (size_t i = 0; i < ser.x.size(); ++i) {
      if (!std::isfinite(ser.x[i]) || !std::isfinite(ser.y[i])) continue;
      x0 = std::min(x0, ser.x[i]), x1 = std::max(x1, ser.x[i]);
      y0 = std::min(y0, ser.y[i]), y1 = std::max(y1, ser.y[i]);
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
  HeatmapGeometry g;
  write_png(path, drawn_for(path, [&] { return draw_heatmap(h, &g); }));
  return g;
}

// ---- bar charts --------------------------------------------------------------------------------------------------

namespace {

// The frame shared by both bar charts: groups of `per_group` bars along x, values up y, a legend on the right.
struct BarFrame {
  cv::Mat img;
  cv::Rect area;
  int bar_w = 0, group_gap = 0, slot = 0;  // slot: the width of one group including its gap
  double v_max = 1.0;
  int bar_x(int g, int b) const { return area.x + g * slot + group_gap / 2 + b * bar_w; }
  int y_of(double v) const {  // clamped to the frame: a value above a fixed v_max ends at the top
    return area.y + area.height - int(std::lround(std::clamp(v / v_max, 0.0, 1.0) * area.height));
  }
};

BarFrame bar_frame(const std::string& title, const std::string& group_axis, const std::string& value_axis,
                   const std::vector<std::string>& groups, int per_group, double v_max, int max_width, int height,
                   const std::vector<std::string>& legend_names, const std::vector<cv::Scalar>& legend_colors,
                   const std::string& subtitle) {
  BarFrame f;
  double lo = 0;
  f.v_max = v_max;
  nice_range(lo, f.v_max, 5);
  height = std::max(height, 260);
  int top = subtitle.empty() ? 44 : 62, bottom = 60 + (per_group > 1 ? 14 : 0);
  cv::Size legend = legend_size(legend_names, height - top - bottom);
  int left = 34 + value_axis_width(0, f.v_max, 5) + 10, right = legend.width + 40;
  int avail = std::max(int(groups.size()) * (per_group + 1), max_width - left - right);
  // Preferred: 26 px bars and a gap of half a group; squeezed evenly when there are many groups.
  int slot = std::min(per_group * 26 + 14, avail / int(groups.size()));
  f.group_gap = std::max(slot >= 4 ? 1 : 0, slot * 14 / (per_group * 26 + 14));
  f.bar_w = std::max(1, (slot - f.group_gap) / per_group);
  f.slot = f.bar_w * per_group + f.group_gap;
  if (f.slot * int(groups.size()) < 360) {  // few groups: spread them over a 360 px plot, bars up to 40 px
    f.slot = 360 / int(groups.size());
    f.bar_w = std::min(40, f.slot * 2 / (per_group * 2 + 1));
    f.group_gap = f.slot - f.bar_w * per_group;
  }
  int plot_w = f.slot * int(groups.size());
  int width = std::max(left + plot_w + right, text_size(title, kTitle, 2).width + 40);
  f.area = cv::Rect(left, top, plot_w, height - top - bottom);
  f.img = cv::Mat(height, width, CV_8UC3, kWhite);
  put_text(f.img, title, {width / 2, 20}, kTitle, HAlign::kCenter, kInk, 2);
  if (!subtitle.empty()) put_text(f.img, subtitle, {width / 2, 44}, kSmall, HAlign::kCenter);
  draw_value_axis(f.img, f.area, 0, f.v_max, 5);
  draw_slot_labels(f.img, groups, f.area.x, f.slot, f.area.y + f.area.height + (per_group > 1 ? 26 : 12), 90);
  put_text(f.img, group_axis, {f.area.x + f.area.width / 2, height - 14}, kAxis, HAlign::kCenter);
  put_text_vertical(f.img, value_axis, {14, f.area.y + f.area.height / 2}, kAxis);
  draw_legend(f.img, {f.area.x + f.area.width + 20, f.area.y}, legend_names, legend_colors, f.area.height);
  return f;
}

// Short names under each bar of a group ("text" -> "t" when the bar is narrow), only when they fit.
void draw_bar_names(BarFrame& f, const std::vector<std::string>& bar_names, int groups) {
  if (bar_names.size() < 2) return;
  int w = max_text_width(bar_names, kSmall);
  bool full = w + 2 <= f.bar_w, initial = text_size("W", kSmall).width + 1 <= f.bar_w;
  if (!full && !initial) return;
  for (int g = 0; g < groups; ++g)
    for (size_t b = 0; b < bar_names.size(); ++b)
      put_text(f.img, full ? bar_names[b] : bar_names[b].substr(0, 1),
               {f.bar_x(g, int(b)) + f.bar_w / 2, f.area.y + f.area.height + 10}, kSmall, HAlign::kCenter);
}

}  // namespace

cv::Mat draw_stacked_bars(const StackedBars& b) {
  const std::string what = "stacked bars '" + b.title + "'";
  int groups = int(b.group_names.size()), bars = int(b.bar_names.size()), segs = int(b.segment_names.size());
  if (groups == 0 || bars == 0 || segs == 0) fail(what, "no groups, bars or segments");
  if (int(b.values.size()) != groups)
    fail(what, std::to_string(b.values.size()) + " groups of values for " + std::to_string(groups) + " group names");
  double tallest = 0;
  for (int g = 0; g < groups; ++g) {
    if (int(b.values[g].size()) != bars)
      fail(what, "group '" + b.group_names[g] + "' has " + std::to_string(b.values[g].size()) + " bars, expected " +
                     std::to_string(bars));
    for (const auto& stack : b.values[g]) {
      if (!stack.empty() && int(stack.size()) != segs)
        fail(what, "group '" + b.group_names[g] + "' has a bar of " + std::to_string(stack.size()) +
                       " segments, expected " + std::to_string(segs));
      double sum = 0;
      for (double v : stack) sum += std::isfinite(v) ? std::max(v, 0.0) : 0.0;
      tallest = std::max(tallest, sum);
    }
  }
  std::string key;
  for (int i = 0; i < bars && bars > 1; ++i) key += (i ? ", " : "bars per group: ") + b.bar_names[i];
  BarFrame f = bar_frame(b.title, b.group_axis, b.value_axis, b.group_names, bars,
                         std::isnan(b.v_max) ? (tallest > 0 ? tallest : 1.0) : b.v_max, b.max_width, b.height,
                         b.segment_names, categorical_palette(segs), key);
  for (int g = 0; g < groups; ++g)
    for (int i = 0; i < bars; ++i) {
      const auto& stack = b.values[g][i];
      double base = 0;
      int x = f.bar_x(g, i), w = std::max(1, f.bar_w - (f.bar_w >= 6 ? 1 : 0));
      for (int s = 0; s < int(stack.size()); ++s) {
        double v = std::isfinite(stack[s]) ? std::max(stack[s], 0.0) : 0.0;
        if (v <= 0) continue;
        int y_top = f.y_of(base + v), y_bottom = f.y_of(base);
        cv::rectangle(f.img, cv::Rect(x, y_top, w, std::max(1, y_bottom - y_top)), category_color(s), cv::FILLED);
        if (y_bottom - y_top >= 4 && w >= 4) cv::line(f.img, {x, y_top}, {x + w - 1, y_top}, kWhite, 1);
        base += v;
      }
    }
  cv::line(f.img, {f.area.x, f.area.y + f.area.height}, {f.area.x + f.area.width, f.area.y + f.area.height}, kInk, 1);
  draw_bar_names(f, b.bar_names, groups);
  return f.img;
}

void plot_stacked_bars(const std::string& path, const StackedBars& b) {
  write_png(path, drawn_for(path, [&] { return draw_stacked_bars(b); }));
}

cv::Mat draw_grouped_bars(const GroupedBars& b) {
  const std::string what = "grouped bars '" + b.title + "'";
  int groups = int(b.group_names.size()), series = int(b.series_names.size());
  if (groups == 0 || series == 0) fail(what, "no groups or series");
  if (int(b.values.size()) != groups)
    fail(what, std::to_string(b.values.size()) + " groups of values for " + std::to_string(groups) + " group names");
  if (!b.series_colors.empty() && int(b.series_colors.size()) != series)
    fail(what, std::to_string(b.series_colors.size()) + " colours for " + std::to_string(series) + " series");
  double tallest = 0;
  for (int g = 0; g < groups; ++g) {
    if (int(b.values[g].size()) != series)
      fail(what, "group '" + b.group_names[g] + "' has " + std::to_string(b.values[g].size()) + " values, expected " +
                     std::to_string(series));
    for (double v : b.values[g]) tallest = std::isfinite(v) ? std::max(tallest, v) : tallest;
  }
  for (const auto& line : b.ref_lines) tallest = std::max(tallest, line.value);
  std::vector<cv::Scalar> colors = b.series_colors.empty() ? categorical_palette(series) : b.series_colors;
  BarFrame f = bar_frame(b.title, b.group_axis, b.value_axis, b.group_names, series,
                         std::isnan(b.v_max) ? (tallest > 0 ? tallest * 1.05 : 1.0) : b.v_max, b.max_width, b.height,
                         b.series_names, colors, "");
  for (int g = 0; g < groups; ++g)
    for (int s = 0; s < series; ++s) {
      double v = b.values[g][s];
      if (!std::isfinite(v) || v <= 0) continue;
      int y_top = f.y_of(std::min(v, f.v_max));
      int w = std::max(1, f.bar_w - (f.bar_w >= 6 ? 1 : 0));
      cv::rectangle(f.img, cv::Rect(f.bar_x(g, s), y_top, w, std::max(1, f.area.y + f.area.height - y_top)),
                    colors[s], cv::FILLED);
    }
  for (const auto& line : b.ref_lines) {
    int y = f.y_of(std::min(line.value, f.v_max));
    for (int x = f.area.x; x < f.area.x + f.area.width; x += 12)
      cv::line(f.img, {x, y}, {std::min(x + 7, f.area.x + f.area.width), y}, kInk, 1);
    std::string label = line.name + " = " + format_value("%.3g", line.value);
    put_text(f.img, label, {f.area.x + f.area.width - 4, y - 11}, kSmall, HAlign::kRight);
  }
  cv::line(f.img, {f.area.x, f.area.y + f.area.height}, {f.area.x + f.area.width, f.area.y + f.area.height}, kInk, 1);
  draw_bar_names(f, b.series_names, groups);
  return f.img;
}

void plot_grouped_bars(const std::string& path, const GroupedBars& b) {
  write_png(path, drawn_for(path, [&] { return draw_grouped_bars(b); }));
}

// ---- patches -------------------------------------------------------------------------------------------------------

cv::Mat draw_patch_overlay(const PatchOverlay& p, PatchOverlayGeometry* geometry) {
  const std::string what = "patch overlay '" + p.title + "'";
  if (p.image_rgb.empty()) fail(what, "empty image");
  if (p.image_rgb.type() != CV_8UC3 && p.image_rgb.type() != CV_8UC1)
    fail(what, "image must be 8-bit RGB or grey, got OpenCV type " + std::to_string(p.image_rgb.type()));
  if (p.grid_h <= 0 || p.grid_w <= 0) fail(what, "grid must be at least 1 x 1");
  if (p.labels.size() != size_t(p.grid_h) * size_t(p.grid_w))
    fail(what, std::to_string(p.labels.size()) + " labels for a " + std::to_string(p.grid_h) + " x " +
                   std::to_string(p.grid_w) + " grid");
  // Whole cells: the scaled image is (grid_h * cell, grid_w * cell), its longer side about p.side.
  int cell = std::max(1, int(std::lround(double(std::max(p.side, 16)) / std::max(p.grid_h, p.grid_w))));
  cv::Mat scaled, bgr;
  cv::Size size(p.grid_w * cell, p.grid_h * cell);
  bool shrink = size.area() < p.image_rgb.size().area();
  cv::resize(p.image_rgb, scaled, size, 0, 0, shrink ? cv::INTER_AREA : cv::INTER_LINEAR);
  cv::cvtColor(scaled, bgr, scaled.channels() == 1 ? cv::COLOR_GRAY2BGR : cv::COLOR_RGB2BGR);

  std::vector<int> present;
  for (int label : p.labels)
    if (label >= 0 && std::find(present.begin(), present.end(), label) == present.end()) present.push_back(label);
  std::sort(present.begin(), present.end());
  std::vector<std::string> names;
  for (int label : present) names.push_back(p.label_name + " " + std::to_string(label));

  // Canvas: title, image, then the legend in rows as wide as the image.
  int pad = 16, top = 40;
  int width = std::max(bgr.cols + 2 * pad, std::min(text_size(p.title, kTitle, 2).width + 2 * pad, 900));
  int entry_w = kSwatch + 8 + max_text_width(names, kSmall) + 14;
  int per_row = std::max(1, (width - 2 * pad) / std::max(1, entry_w));
  int legend_rows = (int(names.size()) + per_row - 1) / per_row;
  cv::Mat img(top + bgr.rows + 12 + legend_rows * kLegendRow + pad, width, CV_8UC3, kWhite);
  PatchOverlayGeometry g;
  g.image_area = cv::Rect((width - bgr.cols) / 2, top, bgr.cols, bgr.rows);
  put_text(img, fit_text(p.title, width - 2 * pad, kTitle), {width / 2, 20}, kTitle, HAlign::kCenter, kInk, 2);

  cv::Mat area = img(g.image_area);
  bgr.copyTo(area);
  for (int r = 0; r < p.grid_h; ++r)
    for (int c = 0; c < p.grid_w; ++c) {
      cv::Rect rect(g.image_area.x + c * cell, g.image_area.y + r * cell, cell, cell);
      g.cells.push_back(rect);
      int label = p.labels[size_t(r) * p.grid_w + c];
      if (label < 0) continue;
      cv::Mat roi = img(rect);
      cv::Mat tint(roi.size(), roi.type(), category_color(label));
      cv::addWeighted(roi, 1.0 - kPatchTintAlpha, tint, kPatchTintAlpha, 0.0, roi);
    }
  if (cell >= 8) {  // faint cell borders
    cv::Mat lines = area.clone();
    for (int i = 0; i <= p.grid_w; ++i) cv::line(lines, {i * cell, 0}, {i * cell, area.rows}, kWhite, 1);
    for (int i = 0; i <= p.grid_h; ++i) cv::line(lines, {0, i * cell}, {area.cols, i * cell}, kWhite, 1);
    cv::addWeighted(area, 0.7, lines, 0.3, 0.0, area);
  }
  for (size_t i = 0; i < names.size(); ++i) {
    cv::Point at(pad + int(i) % per_row * entry_w, top + bgr.rows + 12 + int(i) / per_row * kLegendRow);
    cv::rectangle(img, cv::Rect(at.x, at.y, kSwatch, kSwatch), category_color(present[i]), cv::FILLED);
    put_text(img, names[i], {at.x + kSwatch + 8, at.y + kSwatch / 2}, kSmall);
  }
  if (geometry) *geometry = g;
  return img;
}

PatchOverlayGeometry plot_patch_overlay(const std::string& path, const PatchOverlay& p) {
  PatchOverlayGeometry g;
  write_png(path, drawn_for(path, [&] { return draw_patch_overlay(p, &g); }));
  return g;
}

}  // namespace mole
