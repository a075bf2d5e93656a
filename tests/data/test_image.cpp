// Images: decoding (formats, modes, EXIF, every error an ImageError naming the file, size bombs refused from the
// header), the LLaVA/CLIP preprocessing steps (expand2square geometry, resize sizes, centre crop, normalisation),
// the preprocessor_config.json reader, and the whole pipeline against LLaVA + transformers' PIL-backed
// CLIPImageProcessor on the images that tests/reference/make_image_reference.py writes (fixture image_fixture).
#include "data/image.h"

#include <chrono>
#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

using Catch::Contains;
using namespace mole;

namespace {

using Bytes = std::vector<uint8_t>;

void write_bytes(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

Bytes encode(const cv::Mat& image, const std::string& ext, const std::vector<int>& params = {}) {
  Bytes out;
  REQUIRE(cv::imencode(ext, image, out, params));
  return out;
}

// An 8-bit BGR test image with gradients and noise (OpenCV's channel order, as imencode expects).
cv::Mat test_bgr(int width, int height, int seed = 0) {
  cv::Mat m(height, width, CV_8UC3);
  cv::RNG rng(uint64(seed + 1));
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c)
        m.at<cv::Vec3b>(y, x)[c] = cv::saturate_cast<uint8_t>(
            255.0 * (x + 2 * y + 50 * c) / (width + 2 * height + 100) + rng.uniform(-20, 20));
  return m;
}

// The ImageError message for loading `path` ("" when it loads).
std::string load_error(const std::string& path, const ImageReadOptions& options = {}) {
  try {
    load_rgb(path, options);
  } catch (const ImageError& e) {
    return e.what();
  }
  return "";
}

std::string decode_error(const Bytes& bytes, const ImageReadOptions& options = {}) {
  try {
    decode_rgb(bytes, "<bytes>", options);
  } catch (const ImageError& e) {
    return e.what();
  }
  return "";
}

void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}
void put_le(Bytes& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(uint8_t(v >> (8 * i)));
}

uint32_t crc32(const uint8_t* p, size_t n) {  // PNG's CRC (zlib's crc32)
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// PNG signature + IHDR (8-bit RGB) with a valid CRC, and nothing else: what a decompression bomb starts with.
Bytes png_header(uint32_t width, uint32_t height) {
  Bytes b = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  put_be32(b, 13);
  size_t type_at = b.size();
  for (char c : std::string("IHDR")) b.push_back(uint8_t(c));
  put_be32(b, width);
  put_be32(b, height);
  for (uint8_t v : {8, 2, 0, 0, 0}) b.push_back(v);  // bit depth 8, colour type 2 (RGB), deflate, filter, no interlace
  put_be32(b, crc32(b.data() + type_at, b.size() - type_at));
  return b;
}

Bytes jpeg_header(uint16_t width, uint16_t height) {  // SOI + SOF0 (3 components), no scan
  Bytes b = {0xFF, 0xD8, 0xFF, 0xC0, 0x00, 17, 8};
  b.push_back(uint8_t(height >> 8)), b.push_back(uint8_t(height));
  b.push_back(uint8_t(width >> 8)), b.push_back(uint8_t(width));
  b.push_back(3);
  for (uint8_t id = 1; id <= 3; ++id) b.insert(b.end(), {id, 0x11, 0});
  return b;
}

Bytes webp_vp8x_header(uint32_t width, uint32_t height) {  // RIFF/WEBP with a VP8X canvas and no image
  Bytes b = {'R', 'I', 'F', 'F'};
  put_le(b, 22, 4);
  for (char c : std::string("WEBPVP8X")) b.push_back(uint8_t(c));
  put_le(b, 10, 4);
  put_le(b, 0, 4);  // flags + reserved
  put_le(b, width - 1, 3);
  put_le(b, height - 1, 3);
  return b;
}

Bytes bmp_header(int32_t width, int32_t height) {  // BITMAPINFOHEADER, 24 bits, no pixels
  Bytes b = {'B', 'M'};
  put_le(b, 54, 4);
  put_le(b, 0, 4);
  put_le(b, 54, 4);
  put_le(b, 40, 4);
  put_le(b, uint32_t(width), 4);
  put_le(b, uint32_t(height), 4);
  put_le(b, 1, 2);
  put_le(b, 24, 2);
  for (int i = 0; i < 6; ++i) put_le(b, 0, 4);
  return b;
}

// A JPEG with an EXIF APP1 segment holding only Orientation = `orientation`, inserted after SOI.
Bytes with_exif_orientation(const Bytes& jpeg, uint16_t orientation) {
  Bytes tiff = {'I', 'I', 42, 0};
  put_le(tiff, 8, 4);            // first IFD at 8
  put_le(tiff, 1, 2);            // one entry
  put_le(tiff, 0x0112, 2);       // Orientation
  put_le(tiff, 3, 2);            // SHORT
  put_le(tiff, 1, 4);            // count
  put_le(tiff, orientation, 2);  // value, padded to 4 bytes
  put_le(tiff, 0, 2);
  put_le(tiff, 0, 4);  // no next IFD
  Bytes app1 = {0xFF, 0xE1};
  size_t length = 2 + 6 + tiff.size();
  app1.push_back(uint8_t(length >> 8)), app1.push_back(uint8_t(length));
  for (char c : std::string("Exif")) app1.push_back(uint8_t(c));
  app1.insert(app1.end(), {0, 0});
  app1.insert(app1.end(), tiff.begin(), tiff.end());
  Bytes out(jpeg.begin(), jpeg.begin() + 2);
  out.insert(out.end(), app1.begin(), app1.end());
  out.insert(out.end(), jpeg.begin() + 2, jpeg.end());
  return out;
}

int max_abs_diff_u8(const cv::Mat& a, const cv::Mat& b) {
  REQUIRE(a.size() == b.size());
  REQUIRE(a.type() == b.type());
  cv::Mat d;
  cv::absdiff(a, b, d);
  double mx = 0;
  cv::minMaxLoc(d.reshape(1), nullptr, &mx);
  return int(mx);
}

cv::Mat bgr_to_rgb(const cv::Mat& bgr) {
  cv::Mat rgb;
  cv::Mat channels[3];
  cv::split(bgr, channels);
  std::swap(channels[0], channels[2]);
  cv::merge(channels, 3, rgb);
  return rgb;
}

}  // namespace

// ---- decoding -------------------------------------------------------------------------------------------------

TEST_CASE("load_rgb reads PNG, JPEG, WebP and BMP to RGB", "[unit][data][image]") {
  std::string dir = test::scratch_dir("image_formats");
  cv::Mat bgr = test_bgr(37, 23);
  cv::Mat rgb = bgr_to_rgb(bgr);
  for (const std::string ext : {".png", ".bmp", ".webp"}) {
    INFO(ext);
    std::vector<int> params;
    if (ext == ".webp") params = {cv::IMWRITE_WEBP_QUALITY, 101};  // > 100: lossless
    write_bytes(dir + "/a" + ext, encode(bgr, ext, params));
    cv::Mat got = load_rgb(dir + "/a" + ext);
    REQUIRE(got.type() == CV_8UC3);
    CHECK(max_abs_diff_u8(got, rgb) == 0);
  }
  for (const std::vector<int>& params : std::vector<std::vector<int>>{
           {}, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}, {cv::IMWRITE_JPEG_RST_INTERVAL, 2}}) {
    Bytes jpeg = encode(bgr, ".jpg", params);
    write_bytes(dir + "/a.jpg", jpeg);
    cv::Mat got = load_rgb(dir + "/a.jpg");
    CHECK(got.size() == rgb.size());
    CHECK(max_abs_diff_u8(got, rgb) < 40);  // lossy, but the same picture in the same channel order
    jpeg.insert(jpeg.end(), {'t', 'r', 'a', 'i', 'l', 'e', 'r'});  // data after EOI is ignored, as by libjpeg
    CHECK(decode_rgb(jpeg, "trailer").size() == rgb.size());
  }
}

TEST_CASE("load_rgb converts modes as PIL's convert(\"RGB\") does", "[unit][data][image]") {
  cv::Mat bgr = test_bgr(16, 9, 3);
  SECTION("grayscale is replicated to three channels") {
    cv::Mat gray;
    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    cv::Mat got = decode_rgb(encode(gray, ".png"), "gray");
    cv::Mat expected;
    cv::merge(std::vector<cv::Mat>{gray, gray, gray}, expected);
    CHECK(max_abs_diff_u8(got, expected) == 0);
  }
  SECTION("alpha is dropped, not composited: colours under transparent pixels stay") {
    cv::Mat bgra;
    cv::cvtColor(bgr, bgra, cv::COLOR_BGR2BGRA);
    for (int y = 0; y < bgra.rows; ++y)
      for (int x = 0; x < bgra.cols; ++x) bgra.at<cv::Vec4b>(y, x)[3] = uint8_t(x < 8 ? 0 : 100);
    CHECK(max_abs_diff_u8(decode_rgb(encode(bgra, ".png"), "rgba"), bgr_to_rgb(bgr)) == 0);
  }
  SECTION("16-bit samples keep their high byte") {
    cv::Mat wide;
    bgr.convertTo(wide, CV_16UC3, 256.0);
    wide += cv::Scalar(200, 128, 255);  // low bytes >= 128: the high byte is kept, not rounded
    CHECK(max_abs_diff_u8(decode_rgb(encode(wide, ".png"), "rgb16"), bgr_to_rgb(bgr)) == 0);
    cv::Mat gray, gray16;
    cv::cvtColor(bgr, gray, cv::COLOR_BGR2GRAY);
    gray.convertTo(gray16, CV_16UC1, 257.0);
    cv::Mat expected;
    cv::merge(std::vector<cv::Mat>{gray, gray, gray}, expected);
    CHECK(max_abs_diff_u8(decode_rgb(encode(gray16, ".png"), "gray16"), expected) == 0);
  }
}

TEST_CASE("EXIF orientation is ignored by default (as PIL) and applied on request", "[unit][data][image]") {
  cv::Mat bgr = test_bgr(40, 20);
  Bytes jpeg = with_exif_orientation(encode(bgr, ".jpg"), 6);  // 6: rotate 90 degrees clockwise to display
  cv::Mat as_stored = decode_rgb(jpeg, "exif");
  CHECK(as_stored.cols == 40);
  CHECK(as_stored.rows == 20);
  ImageReadOptions rotate;
  rotate.apply_exif_orientation = true;
  cv::Mat turned = decode_rgb(jpeg, "exif", rotate);
  CHECK(turned.cols == 20);
  CHECK(turned.rows == 40);
  cv::Mat expected;
  cv::rotate(as_stored, expected, cv::ROTATE_90_CLOCKWISE);
  CHECK(max_abs_diff_u8(turned, expected) == 0);
}

TEST_CASE("unreadable files are ImageErrors naming the file and the problem", "[unit][data][image]") {
  std::string dir = test::scratch_dir("image_errors");
  cv::Mat bgr = test_bgr(64, 48);

  CHECK_THAT(load_error(dir + "/missing.jpg"), Contains(dir + "/missing.jpg") && Contains("no such file"));
  CHECK_THAT(load_error(dir), Contains("is a directory"));
  write_bytes(dir + "/empty.png", {});
  CHECK_THAT(load_error(dir + "/empty.png"), Contains("empty.png") && Contains("empty file"));
  std::string html = "<!DOCTYPE html><html><body>404 Not Found</body></html>";
  write_bytes(dir + "/page.jpg", Bytes(html.begin(), html.end()));
  CHECK_THAT(load_error(dir + "/page.jpg"), Contains("page.jpg") && Contains("not an image") && Contains("3c 21"));
  std::string gif = "GIF89a\x01\x00\x01\x00\x00\x00\x00;";
  write_bytes(dir + "/anim.jpg", Bytes(gif.begin(), gif.end()));
  CHECK_THAT(load_error(dir + "/anim.jpg"), Contains("anim.jpg") && Contains("GIF"));

  SECTION("truncated JPEGs are refused at every cut (libjpeg alone would pad them with grey)") {
    for (const std::vector<int>& params :
         std::vector<std::vector<int>>{{}, {cv::IMWRITE_JPEG_PROGRESSIVE, 1}, {cv::IMWRITE_JPEG_RST_INTERVAL, 1}}) {
      Bytes jpeg = encode(bgr, ".jpg", params);
      for (double keep : {0.01, 0.1, 0.3, 0.5, 0.9, 0.99}) {
        Bytes cut(jpeg.begin(), jpeg.begin() + std::ptrdiff_t(double(jpeg.size()) * keep));
        INFO("kept " << cut.size() << " of " << jpeg.size() << " bytes");
        CHECK_THAT(decode_error(cut), Contains("<bytes>") && Contains("JPEG") &&
                                          (Contains("truncated") || Contains("corrupt")));
      }
      Bytes no_eoi(jpeg.begin(), jpeg.end() - 2);
      CHECK_THAT(decode_error(no_eoi), Contains("truncated JPEG"));
    }
    Bytes jpeg = encode(bgr, ".jpg");
    write_bytes(dir + "/cut.jpg", Bytes(jpeg.begin(), jpeg.begin() + std::ptrdiff_t(jpeg.size() / 2)));
    CHECK_THAT(load_error(dir + "/cut.jpg"), Contains("cut.jpg") && Contains("truncated JPEG"));
  }
  SECTION("truncated PNG, WebP and BMP") {
    for (const std::string ext : {".png", ".webp", ".bmp"}) {
      Bytes full = encode(bgr, ext);
      for (double keep : {0.02, 0.5, 0.99}) {
        Bytes cut(full.begin(), full.begin() + std::ptrdiff_t(double(full.size()) * keep));
        INFO(ext << ": kept " << cut.size() << " of " << full.size() << " bytes");
        CHECK_THAT(decode_error(cut), Contains("truncated"));
      }
    }
  }
  SECTION("corrupt PNG data (a flipped bit fails libpng's CRC check)") {
    Bytes png = encode(bgr, ".png");
    png[png.size() / 2] ^= 0x10;
    write_bytes(dir + "/flipped.png", png);
    CHECK_THAT(load_error(dir + "/flipped.png"), Contains("flipped.png") && Contains("corrupt PNG"));
  }
  SECTION("a file larger than max_file_bytes is not read") {
    write_bytes(dir + "/big.png", encode(bgr, ".png"));
    ImageReadOptions small;
    small.max_file_bytes = 100;
    CHECK_THAT(load_error(dir + "/big.png", small), Contains("big.png") && Contains("max_file_bytes"));
  }
}

TEST_CASE("images over max_pixels are refused from the header, before decoding", "[unit][data][image]") {
  std::string dir = test::scratch_dir("image_bombs");
  // Headers only, claiming sizes whose decoding would allocate gigabytes: refused in microseconds.
  struct Bomb {
    std::string name;
    Bytes bytes;
    std::string size;
  };
  std::vector<Bomb> bombs = {{"bomb.png", png_header(20000, 20000), "20000x20000"},
                             {"bomb.jpg", jpeg_header(60000, 60000), "60000x60000"},
                             {"bomb.webp", webp_vp8x_header(16384, 16384), "16384x16384"},
                             {"bomb.bmp", bmp_header(30000, -30000), "30000x30000"}};
  for (const auto& bomb : bombs) {
    INFO(bomb.name);
    write_bytes(dir + "/" + bomb.name, bomb.bytes);
    auto start = std::chrono::steady_clock::now();
    std::string error = load_error(dir + "/" + bomb.name);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK_THAT(error, Contains(bomb.name) && Contains(bomb.size) && Contains("megapixels") && Contains("max_pixels"));
    CHECK(seconds < 0.5);
  }
  ImageInfo info = inspect_image(bombs[0].bytes.data(), bombs[0].bytes.size(), "bomb");
  CHECK(info.format == ImageFormat::kPng);
  CHECK(info.width == 20000);
  CHECK(info.height == 20000);
  CHECK_THAT(info.incomplete, Contains("IEND"));

  // The limit is configurable, and a normal image passes the default.
  Bytes png = encode(test_bgr(100, 60), ".png");
  CHECK(decode_rgb(png, "ok").cols == 100);
  ImageReadOptions strict;
  strict.max_pixels = 5000;
  CHECK_THAT(decode_error(png, strict), Contains("100x60"));
}

// ---- preprocessing steps --------------------------------------------------------------------------------------

TEST_CASE("expand2square centres the image on the mean colour with LLaVA's integer offsets", "[unit][data][image]") {
  const std::array<uint8_t, 3> color = {122, 116, 104};
  CHECK(ImageProcessorConfig().pad_color() == color);  // tuple(int(x * 255) for x in CLIP mean)
  auto is_pad = [&](const cv::Mat& m, int y, int x) {
    auto p = m.at<cv::Vec3b>(y, x);
    return p[0] == color[0] && p[1] == color[1] && p[2] == color[2];
  };
  cv::Mat wide(3, 6, CV_8UC3, cv::Scalar(1, 2, 3));  // w > h: rows offset (6 - 3) // 2 = 1
  cv::Mat sq = expand_to_square(wide, color);
  REQUIRE(sq.size() == cv::Size(6, 6));
  for (int y = 0; y < 6; ++y) {
    INFO("row " << y);
    CHECK(is_pad(sq, y, 0) == (y < 1 || y >= 4));
    CHECK(is_pad(sq, y, 5) == (y < 1 || y >= 4));
  }
  cv::Mat tall(7, 4, CV_8UC3, cv::Scalar(1, 2, 3));  // h > w: columns offset (7 - 4) // 2 = 1
  sq = expand_to_square(tall, color);
  REQUIRE(sq.size() == cv::Size(7, 7));
  for (int x = 0; x < 7; ++x) {
    INFO("column " << x);
    CHECK(is_pad(sq, 3, x) == (x < 1 || x >= 5));
  }
  cv::Mat square(5, 5, CV_8UC3, cv::Scalar(9, 9, 9));
  CHECK(expand_to_square(square, color).data == square.data);  // returned as is
}

TEST_CASE("resize output size and centre crop follow transformers", "[unit][data][image]") {
  // get_resize_output_image_size(default_to_square=False): (short, long) -> (size, int(size * long / short))
  CHECK(resize_output_size(480, 640, 336) == cv::Size(448, 336));
  CHECK(resize_output_size(500, 300, 336) == cv::Size(336, 560));
  CHECK(resize_output_size(336, 337, 336) == cv::Size(337, 336));
  CHECK(resize_output_size(80, 50, 336) == cv::Size(336, 537));  // 537.6 truncated
  CHECK(resize_output_size(7, 7, 336) == cv::Size(336, 336));

  cv::Mat image(5, 5, CV_8UC1);
  for (int i = 0; i < 25; ++i) image.at<uint8_t>(i / 5, i % 5) = uint8_t(i + 1);
  cv::Mat c = center_crop(image, 3, 3);  // offset (5 - 3) // 2 = 1
  CHECK(c.at<uint8_t>(0, 0) == 7);
  c = center_crop(image, 4, 2);  // rows (5 - 4) // 2 = 0, columns (5 - 2) // 2 = 1
  CHECK(c.at<uint8_t>(0, 0) == 2);
  c = center_crop(image, 8, 6);  // larger: pasted at ceil(3 / 2) = 2 rows, ceil(1 / 2) = 1 column, zeros around
  REQUIRE(c.size() == cv::Size(6, 8));
  CHECK(c.at<uint8_t>(2, 1) == 1);
  CHECK(c.at<uint8_t>(6, 5) == 25);
  CHECK(c.at<uint8_t>(1, 1) == 0);
  CHECK(c.at<uint8_t>(2, 0) == 0);
  CHECK(c.at<uint8_t>(7, 5) == 0);
}

TEST_CASE("pil_resize: constant images stay constant, channels are independent, same size copies",
          "[unit][data][image]") {
  for (auto filter : {Resample::kBicubic, Resample::kBilinear}) {
    for (cv::Size to : {cv::Size(7, 5), cv::Size(40, 3), cv::Size(1, 1), cv::Size(100, 64)}) {
      cv::Mat flat(13, 17, CV_8UC3, cv::Scalar(0, 128, 255));
      cv::Mat out = pil_resize(flat, to.width, to.height, filter);
      REQUIRE(out.size() == to);
      std::vector<cv::Mat> planes;
      cv::split(out, planes);
      CHECK(cv::countNonZero(planes[0]) == 0);
      CHECK(cv::countNonZero(planes[1] != 128) == 0);
      CHECK(cv::countNonZero(planes[2] != 255) == 0);
    }
  }
  cv::Mat rgb = bgr_to_rgb(test_bgr(31, 19));
  cv::Mat out = pil_resize(rgb, 12, 45, Resample::kBicubic);
  std::vector<cv::Mat> planes;
  cv::split(rgb, planes);
  for (int c = 0; c < 3; ++c) {
    cv::Mat plane_out = pil_resize(planes[c], 12, 45, Resample::kBicubic);
    cv::Mat from_rgb;
    cv::extractChannel(out, from_rgb, c);
    CHECK(cv::countNonZero(plane_out != from_rgb) == 0);
  }
  cv::Mat same = pil_resize(rgb, 31, 19, Resample::kBicubic);
  CHECK(same.data != rgb.data);
  CHECK(max_abs_diff_u8(same, rgb) == 0);
  ResampleWindows w = resample_windows(640, 336, Resample::kBicubic);  // shrinking: a stretched filter
  CHECK(w.stride == 2 * int(std::ceil(2.0 * 640 / 336)) + 1);
  for (size_t i = 0; i < w.first.size(); ++i) {
    int64_t sum = 0;
    for (int k = 0; k < w.count[i]; ++k) sum += w.weights[i * size_t(w.stride) + size_t(k)];
    CHECK(std::abs(sum - (int64_t(1) << 22)) <= w.count[i]);  // normalised to 1, up to rounding per tap
  }
}

TEST_CASE("pil_resize (row-wise, transposed, AVX2 where available) equals the naive per-pixel loops",
          "[unit][data][image]") {
  cv::RNG rng(7);
  for (int trial = 0; trial < 40; ++trial) {
    const int w = rng.uniform(1, 90), h = rng.uniform(1, 90), to_w = rng.uniform(1, 120), to_h = rng.uniform(1, 120);
    const int channels = trial % 3 == 0 ? 1 : 3;
    const Resample filter = trial % 2 ? Resample::kBilinear : Resample::kBicubic;
    cv::Mat image(h, w, CV_8UC(channels));
    rng.fill(image, cv::RNG::UNIFORM, 0, 256);
    if (trial % 4 == 1) image.rowRange(0, (h + 1) / 2).setTo(cv::Scalar::all(255));  // saturated: clipping
    INFO(w << "x" << h << "x" << channels << " -> " << to_w << "x" << to_h << " filter " << int(filter));
    CHECK(max_abs_diff_u8(pil_resize(image, to_w, to_h, filter), pil_resize_naive(image, to_w, to_h, filter)) == 0);
  }
}

TEST_CASE("process gives CLIP-normalised (3, 336, 336) float32", "[unit][data][image]") {
  ImageProcessor processor;
  cv::Mat flat(100, 250, CV_8UC3, cv::Scalar(10, 200, 77));
  torch::Tensor pv = processor.process(flat);
  REQUIRE(pv.sizes() == torch::IntArrayRef({3, 336, 336}));
  REQUIRE(pv.scalar_type() == torch::kFloat32);
  const ImageProcessorConfig& cfg = processor.config();
  const int values[3] = {10, 200, 77};
  for (int c = 0; c < 3; ++c) {
    // centre row: image; top row: the pad colour (after a resize, flat regions stay exact)
    float image = (float(values[c] * (1.0 / 255.0)) - float(cfg.image_mean[c])) / float(cfg.image_std[c]);
    float pad = (float(cfg.pad_color()[c] * (1.0 / 255.0)) - float(cfg.image_mean[c])) / float(cfg.image_std[c]);
    CHECK(pv[c][168][168].item<float>() == image);
    CHECK(pv[c][0][168].item<float>() == pad);
  }
}

TEST_CASE("ImageProcessorConfig reads Hugging Face preprocessor_config.json", "[unit][data][image]") {
  // llava-hf/llava-1.5-7b-hf
  json hf = json::parse(R"({"crop_size": {"height": 336, "width": 336}, "do_center_crop": true,
    "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaProcessor", "resample": 3,
    "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}})");
  ImageProcessorConfig c = ImageProcessorConfig::from_json(hf, "hf.json");
  ImageProcessorConfig d;
  CHECK(c.shortest_edge == 336);
  CHECK(c.crop_height == 336);
  CHECK(c.crop_width == 336);
  CHECK(c.image_mean == d.image_mean);
  CHECK(c.image_std == d.image_std);
  CHECK(c.rescale_factor == d.rescale_factor);
  CHECK(c.resample == Resample::kBicubic);
  CHECK(c.pad_to_square);
  CHECK(c.to_json() == d.to_json());

  // openai/clip-vit-large-patch14-336: ints, no rescale keys
  json openai = json::parse(R"({"crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.5, 0.5, 0.5], "image_std": 0.5,
    "resample": 2, "size": 224, "image_aspect_ratio": "square"})");
  c = ImageProcessorConfig::from_json(openai, "openai.json");
  CHECK(c.shortest_edge == 224);
  CHECK(c.crop_height == 224);
  CHECK(c.crop_width == 224);
  CHECK(c.image_std[2] == 0.5);
  CHECK(c.resample == Resample::kBilinear);
  CHECK_FALSE(c.pad_to_square);
  CHECK(c.do_rescale);

  // round trip through to_json, with a fixed-size resize
  c.shortest_edge = 0, c.resize_height = 200, c.resize_width = 300;
  ImageProcessorConfig back = ImageProcessorConfig::from_json(c.to_json(), "round trip");
  CHECK(back.to_json() == c.to_json());
  CHECK(back.resize_height == 200);
  CHECK(back.resize_width == 300);
  json square = openai;
  square["default_to_square"] = true;
  CHECK(ImageProcessorConfig::from_json(square, "square").resize_width == 224);

  auto error = [](json j) {
    try {
      ImageProcessorConfig::from_json(j, "cfg.json");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  json bad = hf;
  bad["resample"] = 1;
  CHECK_THAT(error(bad), Contains("cfg.json") && Contains("resample") && Contains("BICUBIC"));
  bad = hf;
  bad.erase("size");
  CHECK_THAT(error(bad), Contains("'size' is missing"));
  bad = hf;
  bad["image_mean"] = {0.5, 0.5};
  CHECK_THAT(error(bad), Contains("image_mean"));
  bad = hf;
  bad["size"] = {{"shortest_edge", 336}, {"longest_edge", 672}};
  CHECK_THAT(error(bad), Contains("longest_edge"));
  bad = hf;
  bad["crop_size"] = {{"height", -1}, {"width", 3}};
  CHECK_THAT(error(bad), Contains("crop_size.height"));
  bad = hf;
  bad["image_aspect_ratio"] = "anyres";
  CHECK_THAT(error(bad), Contains("anyres"));
  bad = hf;
  bad["do_resize"] = "yes";
  CHECK_THAT(error(bad), Contains("do_resize"));
}

// ---- against LLaVA + transformers -----------------------------------------------------------------------------

// Tolerances. The resized uint8 image must equal PIL's exactly: data/pil_resize reproduces Resample.c's double
// coefficients, 22-bit fixed point and per-pass rounding, so any difference is a bug, not noise. pixel_values are
// then computed as numpy does (float64 rescale cast to float32, float32 (x - mean) / std), so they are expected
// to match exactly as well; 1e-5 (about 4 float32 ulps at |x| ~ 2) only leaves room for a platform whose libm or
// compiler rounds one step differently, while a one-level error in a pixel (1 / 255 / 0.27 = 0.015) fails it by
// three orders of magnitude.
TEST_CASE("images match LLaVA-1.5 + transformers' CLIP processor (PIL backend)", "[reference][data][image]") {
  const std::string dir = test::ref_dir() + "/images";
  INFO("reference images from tests/reference/make_image_reference.py in " << dir);
  REQUIRE(std::filesystem::exists(dir + "/manifest.json"));
  const json manifest = read_json_file(dir + "/manifest.json");
  SafetensorsFile expected(dir + "/expected.safetensors");
  REQUIRE(manifest["cases"].size() >= 20);

  for (const auto& entry : manifest["cases"]) {
    const std::string name = entry["case"], file = entry["file"];
    INFO("case " << name << " (file " << file << ", " << entry["config"].get<std::string>() << ")");
    ImageProcessorConfig config = ImageProcessorConfig::from_file(dir + "/" + entry["config"].get<std::string>());
    config.pad_to_square = entry["pad_to_square"].get<bool>();
    ImageProcessor processor(config);

    // Preprocessing from PIL's decoded pixels (codec versions out of the picture): exact.
    cv::Mat decoded_ref = tensor_to_mat(expected.tensor("decoded/" + file));
    torch::Tensor resized = mat_to_tensor(processor.square_and_resize(decoded_ref));
    torch::Tensor resized_ref = expected.tensor("resized/" + name);
    REQUIRE(resized.sizes() == resized_ref.sizes());
    CHECK(test::max_abs_diff(resized, resized_ref) == 0);
    torch::Tensor pixel_values_ref = expected.tensor(name);
    torch::Tensor pixel_values = processor.process(decoded_ref);
    REQUIRE(pixel_values.sizes() == pixel_values_ref.sizes());
    CHECK(test::max_abs_diff(pixel_values, pixel_values_ref) <= 1e-5);

    // Decoding: OpenCV (system libpng, libjpeg-turbo, libwebp) against Pillow's bundled codecs. PNG, BMP and
    // lossless WebP are exact by definition. JPEG and lossy WebP decoders may legitimately differ by a level
    // between builds (IDCT and chroma upsampling variants); with Debian 12's libjpeg-turbo 2.1.5 and libwebp
    // 1.2.4 against Pillow 13's libjpeg-turbo 3.2.0 and libwebp 1.6.0 they agree exactly. The whole pipeline
    // from the file is compared where the decoded pixels agree.
    cv::Mat decoded = load_rgb(dir + "/" + file);
    REQUIRE(decoded.size() == decoded_ref.size());
    const int decode_diff = max_abs_diff_u8(decoded, decoded_ref);
    if (entry["lossy"].get<bool>()) {
      CHECK(decode_diff <= 2);
      if (decode_diff != 0) WARN(file << ": this build's decoder differs from Pillow's by up to " << decode_diff);
    } else {
      CHECK(decode_diff == 0);
    }
    if (decode_diff == 0) CHECK(test::max_abs_diff(processor.load(dir + "/" + file), pixel_values_ref) <= 1e-5);
  }
}
