#include "data/pil_resize.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MOLE_RESIZE_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace mole {

namespace {

// "8 bits for result. Filter can have negative areas. In one cases the sum of the coefficients will be negative,
// in the other it will be more than 1.0. That is why we need two extra bits for overflow and int type."
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Filter {
  double (*weight)(double x);
  double support;
};

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_filter(double x) {
  // https://en.wikipedia.org/wiki/Bicubic_interpolation#Bicubic_convolution_algorithm, a = -0.5 (Resample.c)
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

Filter filter_of(Resample filter) {
  switch (filter) {
    case Resample::kBilinear: return {bilinear_filter, 1.0};
    case Resample::kBicubic: return {bicubic_filter, 2.0};
  }
  throw std::invalid_argument("pil_resize: unknown resampling filter " + std::to_string(int(filter)));
}

// clip8: the fixed-point sum back to uint8 (PIL's clip8_lookups[in >> PRECISION_BITS]).
inline uint8_t clip8(int32_t sum) {
  int32_t v = sum >> kPrecisionBits;  // arithmetic shift, as in Resample.c
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// One output row of a pass along the rows: dst[i] = clip8(1/2 + sum_t weights[t] * rows[t][i]). Integer sums do
// not depend on the order of their terms, so PIL's pixel-by-pixel loops can become these row-by-row ones, which
// vectorise, with the same result.
void resample_one_row_scalar(const uint8_t* const* rows, const int32_t* weights, int taps, int begin, int n,
                             uint8_t* dst) {
  constexpr int32_t half = 1 << (kPrecisionBits - 1);
  for (int i = begin; i < n; ++i) {
    int32_t acc = half;
    for (int t = 0; t < taps; ++t) acc += int32_t(rows[t][i]) * weights[t];
    dst[i] = clip8(acc);
  }
}

#if defined(MOLE_RESIZE_AVX2)
// The same with AVX2, 32 outputs at a time, their sums kept in registers across the taps (exact 32-bit products,
// as in the scalar code). Chosen at run time when the CPU has AVX2.
__attribute__((target("avx2"))) void resample_one_row_avx2(const uint8_t* const* rows, const int32_t* weights,
                                                            int taps, int n, uint8_t* dst) {
  const __m256i half = _mm256_set1_epi32(1 << (kPrecisionBits - 1));
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i acc0 = half, acc1 = half, acc2 = half, acc3 = half;
    for (int t = 0; t < taps; ++t) {
      const uint8_t* src = rows[t] + i;
      const __m256i w = _mm256_set1_epi32(weights[t]);
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
      acc0 = _mm256_add_epi32(acc0, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(lo), w));
      acc1 = _mm256_add_epi32(acc1, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)), w));
      acc2 = _mm256_add_epi32(acc2, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(hi), w));
      acc3 = _mm256_add_epi32(acc3, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)), w));
    }
    // clip8: arithmetic shift, then saturate to int16 and to uint8 (packs work per 128-bit lane, so undo the
    // lane interleaving with a permute)
    const __m256i s0 = _mm256_srai_epi32(acc0, kPrecisionBits), s1 = _mm256_srai_epi32(acc1, kPrecisionBits);
    const __m256i s2 = _mm256_srai_epi32(acc2, kPrecisionBits), s3 = _mm256_srai_epi32(acc3, kPrecisionBits);
    const __m256i w01 = _mm256_packs_epi32(s0, s1), w23 = _mm256_packs_epi32(s2, s3);
    const __m256i bytes = _mm256_packus_epi16(w01, w23);
    const __m256i ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), ordered);
  }
  resample_one_row_scalar(rows, weights, taps, i, n, dst);
}
#endif

void resample_one_row(const uint8_t* const* rows, const int32_t* weights, int taps, int n, uint8_t* dst) {
#if defined(MOLE_RESIZE_AVX2)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return resample_one_row_avx2(rows, weights, taps, n, dst);
#endif
  resample_one_row_scalar(rows, weights, taps, 0, n, dst);
}

// A pass along the rows (ImagingResampleVertical_8bpc): output row yy mixes input rows
// [win.first[yy] - first_shift, + win.count[yy]).
void resample_rows(const cv::Mat& in, int first_shift, const ResampleWindows& win, cv::Mat& out) {
  const int n = out.cols * out.channels();
  std::vector<const uint8_t*> rows(static_cast<size_t>(win.stride));
  for (int yy = 0; yy < out.rows; ++yy) {
    const int y0 = win.first[yy] - first_shift;
    for (int t = 0; t < win.count[yy]; ++t) rows[t] = in.ptr<uint8_t>(y0 + t);
    resample_one_row(rows.data(), &win.weights[size_t(yy) * win.stride], win.count[yy], n, out.ptr<uint8_t>(yy));
  }
}

}  // namespace

ResampleWindows resample_windows(int in_size, int out_size, Resample filter_code) {
  if (in_size < 1 || out_size < 1)
    throw std::invalid_argument("resample_windows: sizes must be positive, got " + std::to_string(in_size) +
                                " -> " + std::to_string(out_size));
  const Filter filter = filter_of(filter_code);
  // precompute_coeffs with box (in0, in1) = (0, in_size); in0/in1 are floats there, exact for our sizes.
  const double in0 = 0.0, in1 = double(float(in_size));
  double filterscale, scale;
  filterscale = scale = (in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  const double support = filter.support * filterscale;  // stretched filter when shrinking: antialiasing
  ResampleWindows win;
  win.stride = int(std::ceil(support)) * 2 + 1;
  win.first.resize(size_t(out_size));
  win.count.resize(size_t(out_size));
  win.weights.assign(size_t(out_size) * win.stride, 0);
  std::vector<double> k(size_t(win.stride));
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);  // "Round the value" (truncation toward zero, as in C)
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    for (int x = 0; x < xmax; ++x) {
      double w = filter.weight((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    // normalize_coeffs_8bpc: to fixed point, rounding half away from zero
    int32_t* out = &win.weights[size_t(xx) * win.stride];
    for (int x = 0; x < xmax; ++x)
      out[x] = k[x] < 0 ? int32_t(-0.5 + k[x] * (1 << kPrecisionBits)) : int32_t(0.5 + k[x] * (1 << kPrecisionBits));
    win.first[xx] = xmin;
    win.count[xx] = xmax;
  }
  return win;
}

cv::Mat pil_resize(const cv::Mat& image, int width, int height, Resample filter) {
  if (image.type() != CV_8UC1 && image.type() != CV_8UC3)
    throw std::invalid_argument("pil_resize: expected an 8-bit image with 1 or 3 channels, got OpenCV type " +
                                std::to_string(image.type()));
  if (width < 1 || height < 1 || image.empty())
    throw std::invalid_argument("pil_resize: cannot resize " + std::to_string(image.cols) + "x" +
                                std::to_string(image.rows) + " to " + std::to_string(width) + "x" +
                                std::to_string(height));
  // Image.resize: same size -> copy. ImagingResampleInner: a pass per axis whose size changes.
  const bool need_horizontal = width != image.cols;
  const bool need_vertical = height != image.rows;
  if (!need_horizontal && !need_vertical) return image.clone();

  const ResampleWindows vert = resample_windows(image.rows, height, filter);
  // Source rows the vertical pass reads: only those get a horizontal pass.
  const int ybox_first = vert.first.front();
  const int ybox_last = vert.first.back() + vert.count.back();

  cv::Mat src = image;
  int shift = 0;
  if (need_horizontal) {
    // ImagingResampleHorizontal_8bpc over rows [ybox_first, ybox_last), done as a pass along the rows of the
    // transposed image: same sums, but vectorised across the rows instead of one pixel at a time.
    const ResampleWindows horiz = resample_windows(image.cols, width, filter);
    cv::Mat band_t, temp_t(width, ybox_last - ybox_first, image.type());
    cv::transpose(image.rowRange(ybox_first, ybox_last), band_t);  // (W_in, rows, C)
    resample_rows(band_t, 0, horiz, temp_t);                       // (W_out, rows, C)
    cv::transpose(temp_t, src);                                    // (rows, W_out, C)
    shift = ybox_first;
  }
  if (!need_vertical) return src;
  cv::Mat out(height, src.cols, image.type());
  resample_rows(src, shift, vert, out);
  return out;
}

cv::Mat pil_resize_naive(const cv::Mat& image, int width, int height, Resample filter) {
  if (image.type() != CV_8UC1 && image.type() != CV_8UC3)
    throw std::invalid_argument("pil_resize_naive: expected an 8-bit image with 1 or 3 channels");
  const int C = image.channels();
  constexpr int32_t half = 1 << (kPrecisionBits - 1);
  if (width == image.cols && height == image.rows) return image.clone();
  const ResampleWindows vert = resample_windows(image.rows, height, filter);
  const int ybox_first = vert.first.front(), ybox_last = vert.first.back() + vert.count.back();
  cv::Mat src = image;
  int shift = 0;
  if (width != image.cols) {  // ImagingResampleHorizontal_8bpc
    const ResampleWindows horiz = resample_windows(image.cols, width, filter);
    cv::Mat temp(ybox_last - ybox_first, width, image.type());
    for (int yy = 0; yy < temp.rows; ++yy)
      for (int xx = 0; xx < width; ++xx)
        for (int c = 0; c < C; ++c) {
          int32_t ss = half;
          for (int x = 0; x < horiz.count[xx]; ++x)
            ss += int32_t(image.ptr<uint8_t>(yy + ybox_first)[(x + horiz.first[xx]) * C + c]) *
                  horiz.weights[size_t(xx) * horiz.stride + size_t(x)];
          temp.ptr<uint8_t>(yy)[xx * C + c] = clip8(ss);
        }
    src = temp;
    shift = ybox_first;
  }
  if (height == image.rows) return src;
  cv::Mat out(height, src.cols, image.type());  // ImagingResampleVertical_8bpc
  for (int yy = 0; yy < height; ++yy)
    for (int xx = 0; xx < src.cols; ++xx)
      for (int c = 0; c < C; ++c) {
        int32_t ss = half;
        for (int y = 0; y < vert.count[yy]; ++y)
          ss += int32_t(src.ptr<uint8_t>(y + vert.first[yy] - shift)[xx * C + c]) *
                vert.weights[size_t(yy) * vert.stride + size_t(y)];
        out.ptr<uint8_t>(yy)[xx * C + c] = clip8(ss);
      }
  return out;
}

}  // namespace mole
