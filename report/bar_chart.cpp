#include "report/bar_chart.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <opencv2/imgproc.hpp>

#include "report/chart_draw.h"

namespace mole {

using namespace chart;

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

}  // namespace mole
