// Small chart drawing with OpenCV (core/imgproc/imgcodecs only; text in Hershey fonts), enough to draw routing
// figures in the manner of LLaVA-MoLE (Chen et al. 2024, arXiv:2401.16160: expert load per layer for image and
// text tokens) and MoE-LLaVA (Lin et al. 2024, arXiv:2401.15947: expert loading and the modality mix per expert
// and layer), and the demo's loss curves, without a Python or plotting dependency. One kind per file:
// line_chart, heatmap, bar_chart (stacked and grouped), patch_overlay; this file holds what they share.
//
// Every plot_* draws with the matching draw_* and writes a PNG; every error (empty data, lengths that do not agree,
// a file that cannot be written) is a std::runtime_error that names the file and what is wrong. Colours are BGR
// (OpenCV's order). Missing values are NaN: a line breaks there, a heat-map cell is drawn grey, a bar is left out.
#pragma once

#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace mole {

// ---- colours ---------------------------------------------------------------------------------------------------

// Colour of category i (e.g. expert i), the same whatever the number of categories, so expert 2 has one colour in
// every figure: Tableau-10 for 0..9, their lighter Tableau-20 partners for 10..19, then hues stepped by the golden
// angle with alternating brightness (distinct neighbours, still usable for 64 experts).
cv::Scalar category_color(int i);
std::vector<cv::Scalar> categorical_palette(int n);  // category_color(0..n-1)

// The sequential scale of the heat maps (viridis: dark blue at 0, yellow at 1); t is clamped to [0, 1].
cv::Scalar scale_color(double t);

// Writes a BGR image as PNG; throws naming the file when it cannot (missing folder, not writable, bad extension).
void write_png(const std::string& path, const cv::Mat& bgr);

}  // namespace mole
