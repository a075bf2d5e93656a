#include "report/chart.h"

#include <algorithm>
#include <cmath>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "report/chart_draw.h"

namespace mole {

using namespace chart;

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
}  // namespace mole
