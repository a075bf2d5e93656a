// PIL's Image.resize for 8-bit images, bit for bit: what transformers' CLIP processor (PIL backend) and LLaVA use.
// Source: Pillow src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
// ImagingResample{Horizontal,Vertical}_8bpc, ImagingResampleInner) and PIL/Image.py Image.resize, as of Pillow 13.
//
// The algorithm, and why OpenCV's cv::resize cannot stand in for it: PIL resamples separably, a horizontal pass
// (only over the source rows the vertical pass will read) then a vertical pass. Each output pixel has its own
// window of input pixels whose weights come from the filter evaluated at the distance to the output pixel's
// centre, with the filter stretched by the scale when shrinking (support = filter support * max(scale, 1)): PIL
// antialiases on the way down, cv::INTER_CUBIC does not (it always takes 4 taps). The weights are normalised to
// sum to 1, turned into fixed point with 22 fractional bits (PRECISION_BITS = 32 - 8 - 2), and every pass ends
// rounding (+1/2, shift) and clipping to uint8, so the intermediate image is 8-bit too. Bicubic is Keys' cubic
// with a = -0.5.
//
// The weights are computed with the same double arithmetic in the same order as Resample.c, so they are
// identical, and so are the pixels (the tests compare the uint8 result with PIL's exactly). Keep it that way: no
// reassociation, no -ffast-math in resample_windows. The sums themselves are integers, whose order does not
// matter, so both passes run row by row (the horizontal one on the transposed band of rows it needs), with an
// AVX2 kernel where the CPU has it: about twice as fast as Pillow (640x640 -> 336x336: 3 ms vs 6 ms).
#pragma once

#include <cstdint>
#include <vector>

#include <opencv2/core.hpp>

namespace mole {

// PIL's resampling filter codes (PIL.Image.Resampling; the "resample" field of preprocessor_config.json).
enum class Resample : int { kBilinear = 2, kBicubic = 3 };

// The per-output-pixel windows of one axis, in PIL's fixed point: output pixel i reads inputs
// [first[i], first[i] + count[i]) with weights weights[i * stride + j] (sum ~ 1 << 22).
struct ResampleWindows {
  int stride = 0;  // PIL's ksize: the most taps any window can have
  std::vector<int> first, count;
  std::vector<int32_t> weights;
};

// precompute_coeffs + normalize_coeffs_8bpc for resizing `in_size` pixels to `out_size` (box = whole axis).
ResampleWindows resample_windows(int in_size, int out_size, Resample filter);

// Image.resize((width, height), filter) of an 8-bit L or RGB image (CV_8UC1 or CV_8UC3; channels are resampled
// independently, as PIL does for those modes; PIL premultiplies RGBA first, which is not reproduced here).
// Same size: a copy, as PIL returns. Throws std::invalid_argument for another type or a size below 1.
cv::Mat pil_resize(const cv::Mat& image, int width, int height, Resample filter);

// The same, as Resample.c's loops literally do it (pixel by pixel, scalar, no transposes): the naive version the
// tests check the fast one against.
cv::Mat pil_resize_naive(const cv::Mat& image, int width, int height, Resample filter);

}  // namespace mole
