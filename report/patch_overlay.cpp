#include "report/patch_overlay.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <opencv2/imgproc.hpp>

#include "report/chart_draw.h"

namespace mole {

using namespace chart;

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
  return plot_with_geometry<PatchOverlayGeometry>(path,
                                                  [&](PatchOverlayGeometry* g) { return draw_patch_overlay(p, g); });
}

}  // namespace mole
