// Image patches tinted by a label: a ViT patch grid coloured by the expert each patch token chose (report/chart.h: what every chart kind shares).
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>

#include "report/chart.h"

namespace mole {

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


}  // namespace mole
