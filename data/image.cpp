#include "data/image.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <opencv2/imgcodecs.hpp>
#include <torch/torch.h>

#include "core/json_config.h"
#include "core/limits.h"

namespace mole {

namespace fs = std::filesystem;

// ---- configuration --------------------------------------------------------------------------------------------

std::array<uint8_t, 3> ImageProcessorConfig::pad_color() const {
  std::array<uint8_t, 3> color{};
  for (int c = 0; c < 3; ++c)  // int(x * 255): truncation, as Python's int()
    color[c] = uint8_t(std::clamp(int64_t(image_mean[c] * 255), int64_t(0), int64_t(255)));
  return color;
}

namespace {

int64_t positive_int(const json& value, const std::string& what, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 1 || value.get<int64_t>() > kMaxImageSide)
    throw ConfigError(where + ": " + what + " must be an integer from 1 to " + std::to_string(kMaxImageSide) +
                      ", got " + json_excerpt(value));
  return value.get<int64_t>();
}

// A "height"/"width" pair from {"height", "width"}, [height, width] or one int (a square).
void read_height_width(const json& value, const std::string& key, int64_t& height, int64_t& width,
                       const std::string& where) {
  if (value.is_number()) {
    height = width = positive_int(value, "field '" + key + "'", where);
  } else if (value.is_array() && value.size() == 2) {
    height = positive_int(value[0], "field '" + key + "'[0]", where);
    width = positive_int(value[1], "field '" + key + "'[1]", where);
  } else if (value.is_object() && value.contains("height") && value.contains("width")) {
    height = positive_int(value["height"], "field '" + key + ".height'", where);
    width = positive_int(value["width"], "field '" + key + ".width'", where);
  } else {
    throw ConfigError(where + ": field '" + key + "' must be {\"height\": H, \"width\": W}, [H, W] or an int, got " +
                      json_excerpt(value));
  }
}

std::array<double, 3> three_numbers(const json& j, const std::string& key, const std::array<double, 3>& fallback,
                                    const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (it->is_number()) return {it->get<double>(), it->get<double>(), it->get<double>()};
  auto is_number = [](const json& v) { return v.is_number(); };
  if (!it->is_array() || it->size() != 3 || !std::all_of(it->begin(), it->end(), is_number))
    throw ConfigError(where + ": field '" + key + "' must be a list of 3 numbers (RGB) or one number, got " +
                      it->dump());
  return {(*it)[0].get<double>(), (*it)[1].get<double>(), (*it)[2].get<double>()};
}

}  // namespace

ImageProcessorConfig ImageProcessorConfig::from_json(const json& j, const std::string& where) {
  if (!j.is_object()) throw ConfigError(where + ": expected a JSON object (preprocessor_config.json)");
  ImageProcessorConfig c;
  c.do_resize = field_or<bool>(j, "do_resize", c.do_resize, where);
  if (c.do_resize) {
    if (!j.contains("size") || j["size"].is_null())
      throw ConfigError(where + ": required field 'size' is missing (CLIPImageProcessor's default 224 and " +
                        "LLaVA-1.5's 336 differ, so it is not guessed)");
    const json& size = j["size"];
    if (size.is_object() && size.contains("shortest_edge")) {
      if (size.contains("longest_edge") && !size["longest_edge"].is_null())
        throw ConfigError(where + ": size.longest_edge is not supported (CLIP resizes the shortest edge only)");
      c.shortest_edge = positive_int(size["shortest_edge"], "field 'size.shortest_edge'", where);
    } else if (size.is_number() && !field_or<bool>(j, "default_to_square", false, where)) {
      c.shortest_edge = positive_int(size, "field 'size'", where);  // CLIP: an int is a shortest edge
    } else {
      read_height_width(size, "size", c.resize_height, c.resize_width, where);
      c.shortest_edge = 0;
    }
  }
  c.do_center_crop = field_or<bool>(j, "do_center_crop", c.do_center_crop, where);
  if (c.do_center_crop) {
    if (!j.contains("crop_size") || j["crop_size"].is_null())
      throw ConfigError(where + ": required field 'crop_size' is missing (CLIPImageProcessor's default 224 and " +
                        "LLaVA-1.5's 336 differ, so it is not guessed)");
    read_height_width(j["crop_size"], "crop_size", c.crop_height, c.crop_width, where);
  }
  c.do_rescale = field_or<bool>(j, "do_rescale", c.do_rescale, where);
  c.rescale_factor = field_or<double>(j, "rescale_factor", c.rescale_factor, where);
  if (!(c.rescale_factor > 0)) throw ConfigError(where + ": field 'rescale_factor' must be positive");
  c.do_normalize = field_or<bool>(j, "do_normalize", c.do_normalize, where);
  c.image_mean = three_numbers(j, "image_mean", c.image_mean, where);
  c.image_std = three_numbers(j, "image_std", c.image_std, where);
  for (double s : c.image_std)
    if (!(s != 0)) throw ConfigError(where + ": field 'image_std' must not contain 0");
  int resample = field_or<int>(j, "resample", int(c.resample), where);
  if (resample != int(Resample::kBilinear) && resample != int(Resample::kBicubic))
    throw ConfigError(where + ": field 'resample' is " + std::to_string(resample) +
                      "; mole reproduces PIL's BILINEAR (2) and BICUBIC (3) only (0 nearest, 1 lanczos, 4 box, " +
                      "5 hamming are not implemented)");
  c.resample = Resample(resample);
  if (j.contains("image_aspect_ratio") && !j["image_aspect_ratio"].is_null()) {
    auto mode = field<std::string>(j, "image_aspect_ratio", where);
    if (mode != "pad" && mode != "square")
      throw ConfigError(where + ": image_aspect_ratio '" + mode + "' is not supported (\"pad\" or \"square\")");
    c.pad_to_square = mode == "pad";
  }
  // LlavaImageProcessor's do_pad is the same padding (what mole export writes)
  c.pad_to_square = field_or<bool>(j, "do_pad", c.pad_to_square, where);
  c.pad_to_square = field_or<bool>(j, "pad_to_square", c.pad_to_square, where);
  return c;
}

ImageProcessorConfig ImageProcessorConfig::from_file(const std::string& path) {
  return from_json(read_json_file(path), path);
}

json ImageProcessorConfig::to_json() const {
  json j;
  j["image_processor_type"] = "CLIPImageProcessor";
  j["do_convert_rgb"] = true;
  j["do_resize"] = do_resize;
  if (shortest_edge > 0)
    j["size"] = {{"shortest_edge", shortest_edge}};
  else
    j["size"] = {{"height", resize_height}, {"width", resize_width}};
  j["resample"] = int(resample);
  j["do_center_crop"] = do_center_crop;
  j["crop_size"] = {{"height", crop_height}, {"width", crop_width}};
  j["do_rescale"] = do_rescale;
  j["rescale_factor"] = rescale_factor;
  j["do_normalize"] = do_normalize;
  j["image_mean"] = image_mean;
  j["image_std"] = image_std;
  j["pad_to_square"] = pad_to_square;
  return j;
}

// ---- headers --------------------------------------------------------------------------------------------------

const char* image_format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kBmp: return "BMP";
  }
  return "?";
}

namespace {

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }
uint32_t be16(const uint8_t* p) { return uint32_t(p[0]) << 8 | p[1]; }
uint32_t le32(const uint8_t* p) { return uint32_t(p[3]) << 24 | uint32_t(p[2]) << 16 | uint32_t(p[1]) << 8 | p[0]; }
uint32_t le24(const uint8_t* p) { return uint32_t(p[2]) << 16 | uint32_t(p[1]) << 8 | p[0]; }
uint32_t le16(const uint8_t* p) { return uint32_t(p[1]) << 8 | p[0]; }

bool starts_with(const uint8_t* data, size_t size, const char* magic, size_t n) {
  return size >= n && std::memcmp(data, magic, n) == 0;
}

// PNG: the IHDR chunk must come first (width, height: big-endian, 1 .. 2^31 - 1); then chunks up to IEND.
ImageInfo inspect_png(const uint8_t* d, size_t size, const std::string& where) {
  ImageInfo info;
  info.format = ImageFormat::kPng;
  if (size < 8 + 8 + 13) throw ImageError(where + ": truncated PNG: the data ends inside the IHDR header", "truncated image");
  if (be32(d + 8) != 13 || std::memcmp(d + 12, "IHDR", 4) != 0)
    throw ImageError(where + ": corrupt PNG: the first chunk is not a 13-byte IHDR");
  info.width = be32(d + 16);
  info.height = be32(d + 20);
  if (info.width < 1 || info.height < 1 || info.width > 0x7fffffff || info.height > 0x7fffffff)
    throw ImageError(where + ": corrupt PNG: IHDR gives the size " + std::to_string(info.width) + "x" +
                     std::to_string(info.height));
  size_t pos = 8;
  while (true) {
    if (pos + 12 > size) {
      info.incomplete = "the data ends before the IEND chunk";
      break;
    }
    uint64_t length = be32(d + pos);
    std::string type(reinterpret_cast<const char*>(d + pos + 4), 4);
    if (length > 0x7fffffff) throw ImageError(where + ": corrupt PNG: chunk '" + type + "' has length " +
                                              std::to_string(length));
    if (pos + 12 + length > size) {
      info.incomplete = "the '" + type + "' chunk is cut short";
      break;
    }
    if (type == "IEND") break;
    pos += 12 + length;
  }
  return info;
}

bool is_jpeg_sof(uint8_t m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

// JPEG: segments from SOI; the first SOFn gives the size; each SOS is followed by entropy-coded data (in which
// FF 00 is a stuffed byte and FF D0..D7 a restart marker), up to the next marker; complete when EOI is reached.
ImageInfo inspect_jpeg(const uint8_t* d, size_t size, const std::string& where) {
  ImageInfo info;
  info.format = ImageFormat::kJpeg;
  bool have_sof = false, have_scan = false;
  size_t pos = 2;
  while (true) {
    while (pos < size && d[pos] != 0xFF) ++pos;  // bytes between segments: libjpeg skips them with a warning
    while (pos < size && d[pos] == 0xFF) ++pos;  // fill bytes
    if (pos >= size) {
      info.incomplete = have_scan ? "the data ends before the end-of-image marker"
                                  : "the data ends before the first scan";
      break;
    }
    const uint8_t marker = d[pos++];
    if (marker == 0xD9) {  // EOI
      if (!have_scan) throw ImageError(where + ": corrupt JPEG: end-of-image marker before any image data");
      break;
    }
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // TEM, RSTn, SOI: no length
    if (pos + 2 > size) {
      info.incomplete = "the data ends inside a segment header";
      break;
    }
    const size_t length = be16(d + pos);
    if (length < 2) throw ImageError(where + ": corrupt JPEG: segment length " + std::to_string(length));
    if (pos + length > size) {
      info.incomplete = "a segment is cut short";
      break;
    }
    if (is_jpeg_sof(marker) && !have_sof) {
      if (length < 8) throw ImageError(where + ": corrupt JPEG: frame header too short");
      info.height = be16(d + pos + 3);
      info.width = be16(d + pos + 5);
      if (info.width == 0 || info.height == 0)
        throw ImageError(where + ": unsupported JPEG: frame header gives the size " + std::to_string(info.width) +
                         "x" + std::to_string(info.height) + " (a height defined later by DNL is not supported)");
      have_sof = true;
    }
    pos += length;
    if (marker == 0xDA) {  // SOS: skip the entropy-coded data that follows
      if (!have_sof) throw ImageError(where + ": corrupt JPEG: scan before the frame header");
      have_scan = true;
      while (true) {
        const void* ff = pos < size ? std::memchr(d + pos, 0xFF, size - pos) : nullptr;
        if (!ff) {
          pos = size;
          break;
        }
        pos = size_t(static_cast<const uint8_t*>(ff) - d);
        if (pos + 1 >= size) {
          pos = size;
          break;
        }
        const uint8_t next = d[pos + 1];
        if (next == 0x00 || (next >= 0xD0 && next <= 0xD7))
          pos += 2;  // stuffed byte or restart marker: still scan data
        else if (next == 0xFF)
          pos += 1;  // fill byte before a marker
        else
          break;  // a marker: back to the segment walk
      }
    }
  }
  if (!have_sof)
    throw ImageError(where + ": truncated or corrupt JPEG: no frame header (" +
                     (info.incomplete.empty() ? std::string("none found") : info.incomplete) + ")", "truncated image");
  return info;
}

// WebP: RIFF container; the first chunk is VP8 (lossy), VP8L (lossless) or VP8X (extended: canvas size, flags).
ImageInfo inspect_webp(const uint8_t* d, size_t size, const std::string& where) {
  ImageInfo info;
  info.format = ImageFormat::kWebp;
  if (size < 30) throw ImageError(where + ": truncated WebP: the data ends inside the header", "truncated image");
  const uint64_t riff_size = le32(d + 4);
  const uint8_t* chunk = d + 12;
  const uint8_t* payload = d + 20;
  if (std::memcmp(chunk, "VP8 ", 4) == 0) {
    if ((payload[0] & 1) != 0 || payload[3] != 0x9D || payload[4] != 0x01 || payload[5] != 0x2A)
      throw ImageError(where + ": corrupt WebP: bad VP8 key frame header");
    info.width = le16(payload + 6) & 0x3FFF;
    info.height = le16(payload + 8) & 0x3FFF;
  } else if (std::memcmp(chunk, "VP8L", 4) == 0) {
    if (payload[0] != 0x2F) throw ImageError(where + ": corrupt WebP: bad VP8L signature");
    const uint32_t bits = le32(payload + 1);
    info.width = (bits & 0x3FFF) + 1;
    info.height = ((bits >> 14) & 0x3FFF) + 1;
  } else if (std::memcmp(chunk, "VP8X", 4) == 0) {
    if (payload[0] & 0x02)
      throw ImageError(where + ": animated WebP is not supported (OpenCV decodes still images only)");
    info.width = int64_t(le24(payload + 4)) + 1;
    info.height = int64_t(le24(payload + 7)) + 1;
  } else {
    throw ImageError(where + ": corrupt WebP: first chunk '" + std::string(reinterpret_cast<const char*>(chunk), 4) +
                     "' is not VP8, VP8L or VP8X");
  }
  if (info.width < 1 || info.height < 1)
    throw ImageError(where + ": corrupt WebP: size " + std::to_string(info.width) + "x" + std::to_string(info.height));
  if (riff_size < 4 + 8) throw ImageError(where + ": corrupt WebP: RIFF size " + std::to_string(riff_size));
  if (riff_size + 8 > size)
    info.incomplete = "the RIFF header says " + std::to_string(riff_size + 8) + " bytes, the data has " +
                      std::to_string(size);
  return info;
}

// BMP: file header (14 bytes) then a DIB header: BITMAPCOREHEADER (12 bytes, 16-bit sizes) or
// BITMAPINFOHEADER and its extensions (>= 40 bytes, 32-bit sizes; a negative height means top-down rows).
ImageInfo inspect_bmp(const uint8_t* d, size_t size, const std::string& where) {
  ImageInfo info;
  info.format = ImageFormat::kBmp;
  if (size < 26) throw ImageError(where + ": truncated BMP: the data ends inside the header", "truncated image");
  const uint64_t pixel_offset = le32(d + 10);
  const uint32_t dib_size = le32(d + 14);
  int64_t bits_per_pixel = 0, compression = 0;
  if (dib_size == 12) {
    info.width = le16(d + 18);
    info.height = le16(d + 20);
    bits_per_pixel = le16(d + 24);
  } else if (dib_size >= 40) {
    if (size < 14 + 40) throw ImageError(where + ": truncated BMP: the data ends inside the header", "truncated image");
    info.width = int32_t(le32(d + 18));
    info.height = std::abs(int64_t(int32_t(le32(d + 22))));
    bits_per_pixel = le16(d + 28);
    compression = le32(d + 30);
  } else {
    throw ImageError(where + ": corrupt BMP: DIB header size " + std::to_string(dib_size));
  }
  if (info.width < 1 || info.height < 1)
    throw ImageError(where + ": corrupt BMP: size " + std::to_string(info.width) + "x" + std::to_string(info.height));
  if (compression == 0 || compression == 3) {  // BI_RGB, BI_BITFIELDS: rows padded to 4 bytes
    const uint64_t row = (uint64_t(info.width) * uint64_t(bits_per_pixel) + 31) / 32 * 4;
    const uint64_t rows = uint64_t(info.height);
    const bool too_big = row != 0 && rows > (UINT64_MAX - pixel_offset) / row;
    if (too_big || pixel_offset + row * rows > size)
      info.incomplete = "the pixel array is cut short";
  }
  return info;
}

std::string hex_prefix(const uint8_t* d, size_t size) {
  std::ostringstream out;
  for (size_t i = 0; i < std::min<size_t>(size, 8); ++i) {
    static const char* digits = "0123456789abcdef";
    out << (i ? " " : "") << digits[d[i] >> 4] << digits[d[i] & 15];
  }
  return out.str();
}

}  // namespace

ImageInfo inspect_image(const uint8_t* d, size_t size, const std::string& where) {
  if (size == 0) throw ImageError(where + ": empty file, not an image", "not an image");
  if (starts_with(d, size, "\x89PNG\r\n\x1a\n", 8)) return inspect_png(d, size, where);
  if (starts_with(d, size, "\xff\xd8\xff", 3)) return inspect_jpeg(d, size, where);
  if (starts_with(d, size, "RIFF", 4) && size >= 12 && std::memcmp(d + 8, "WEBP", 4) == 0)
    return inspect_webp(d, size, where);
  if (starts_with(d, size, "BM", 2)) return inspect_bmp(d, size, where);
  const char* other = nullptr;
  if (starts_with(d, size, "GIF87a", 6) || starts_with(d, size, "GIF89a", 6))
    other = "GIF (OpenCV 4.6 has no GIF decoder; convert it to PNG)";
  else if (starts_with(d, size, "II*\0", 4) || starts_with(d, size, "MM\0*", 4))
    other = "TIFF";
  else if (size >= 12 && std::memcmp(d + 4, "ftyp", 4) == 0)
    other = "HEIF/AVIF";
  else if (starts_with(d, size, "\0\0\0\x0cjP  ", 8) || starts_with(d, size, "\xff\x4f\xff\x51", 4))
    other = "JPEG 2000";
  if (other) throw ImageError(where + ": unsupported image format " + other + "; mole reads PNG, JPEG, WebP and BMP",
                             "not an image");
  throw ImageError(where + ": not an image (no PNG, JPEG, WebP or BMP signature; the data starts with " +
                   hex_prefix(d, size) + ")",
                   "not an image");
}

// ---- decoding -------------------------------------------------------------------------------------------------

cv::Mat decode_rgb(const std::vector<uint8_t>& bytes, const std::string& where, const ImageReadOptions& options) {
  if (bytes.size() > size_t(INT32_MAX)) throw ImageError(where + ": more than 2 GB of data, not an image we read");
  const ImageInfo info = inspect_image(bytes.data(), bytes.size(), where);
  const char* format = image_format_name(info.format);
  // The limit first: a bomb (a tiny file claiming a huge size) is refused before anything is allocated for it.
  if (info.width * info.height > options.max_pixels) {
    std::ostringstream msg;
    msg << where << ": " << format << " image is " << info.width << "x" << info.height << " ("
        << double(info.width * info.height) / 1e6 << " megapixels), more than the limit of "
        << double(options.max_pixels) / 1e6 << " megapixels (ImageReadOptions::max_pixels); not decoded";
    throw ImageError(msg.str(), "image too large");
  }
  if (options.check_size) options.check_size(info.width, info.height, where);
  // libjpeg fills a truncated JPEG with grey and only warns; PIL refuses one ("image file is truncated"), so do we.
  if (!info.incomplete.empty()) throw ImageError(where + ": truncated " + format + ": " + info.incomplete, "truncated image");

  // IMREAD_COLOR: 8-bit, 3 channels (BGR): grey replicated, alpha and tRNS dropped, palettes expanded, 16-bit
  // samples reduced to their high byte (libpng png_set_strip_16).
  int flags = cv::IMREAD_COLOR;
  if (!options.apply_exif_orientation) flags |= cv::IMREAD_IGNORE_ORIENTATION;
  cv::Mat bgr;
  try {
    bgr = cv::imdecode(cv::Mat(1, int(bytes.size()), CV_8UC1, const_cast<uint8_t*>(bytes.data())), flags);
  } catch (const cv::Exception& e) {
    throw ImageError(where + ": corrupt " + format + ": OpenCV's decoder failed: " + e.what());
  }
  if (bgr.empty()) throw ImageError(where + ": corrupt " + format + " data (OpenCV's decoder failed)");
  const bool same = bgr.cols == info.width && bgr.rows == info.height;
  const bool turned = options.apply_exif_orientation && bgr.cols == info.height && bgr.rows == info.width;
  if (bgr.type() != CV_8UC3 || !(same || turned))
    throw ImageError(where + ": " + format + " decoded to " + std::to_string(bgr.cols) + "x" +
                     std::to_string(bgr.rows) + " with " + std::to_string(bgr.channels()) +
                     " channels, but its header says " + std::to_string(info.width) + "x" +
                     std::to_string(info.height));
  cv::Mat rgb(bgr.rows, bgr.cols, CV_8UC3);  // BGR -> RGB by hand: no OpenCV thread pool in loader threads
  for (int y = 0; y < bgr.rows; ++y) {
    const uint8_t* s = bgr.ptr<uint8_t>(y);
    uint8_t* o = rgb.ptr<uint8_t>(y);
    for (int x = 0; x < bgr.cols; ++x, s += 3, o += 3) {
      o[0] = s[2];
      o[1] = s[1];
      o[2] = s[0];
    }
  }
  return rgb;
}

cv::Mat load_rgb(const std::string& path, const ImageReadOptions& options) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) throw ImageError(path + ": no such file", "image file missing");
  if (fs::is_directory(status)) throw ImageError(path + ": is a directory, not an image file");
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) throw ImageError(path + ": cannot read: " + ec.message());
  if (size > uintmax_t(options.max_file_bytes))
    throw ImageError(path + ": file is " + std::to_string(size) + " bytes, more than the limit of " +
                     std::to_string(options.max_file_bytes) + " (ImageReadOptions::max_file_bytes)",
                     "image too large");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ImageError(path + ": cannot open: " + std::strerror(errno));
  std::vector<uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  if (!in || in.gcount() != std::streamsize(size)) throw ImageError(path + ": read error");
  return decode_rgb(bytes, path, options);
}

// ---- preprocessing --------------------------------------------------------------------------------------------

cv::Mat expand_to_square(const cv::Mat& rgb, const std::array<uint8_t, 3>& color) {
  TORCH_CHECK(rgb.type() == CV_8UC3, "expand_to_square: expected an 8-bit RGB image (CV_8UC3)");
  const int w = rgb.cols, h = rgb.rows;
  if (w == h) return rgb;
  const int side = std::max(w, h);
  // w > h: result.paste(pil_img, (0, (width - height) // 2)); else result.paste(pil_img, ((height - width) // 2, 0))
  const int top = w > h ? (w - h) / 2 : 0, left = w > h ? 0 : (h - w) / 2;
  std::vector<uint8_t> pad_row(size_t(side) * 3);
  for (int x = 0; x < side; ++x) std::memcpy(&pad_row[size_t(x) * 3], color.data(), 3);
  cv::Mat out(side, side, CV_8UC3);  // every byte written below (cv::Mat = Scalar is slow for 3 channels)
  for (int y = 0; y < side; ++y) {
    uint8_t* o = out.ptr<uint8_t>(y);
    if (y < top || y >= top + h) {
      std::memcpy(o, pad_row.data(), pad_row.size());
    } else {
      std::memcpy(o, pad_row.data(), size_t(left) * 3);
      std::memcpy(o + size_t(left) * 3, rgb.ptr<uint8_t>(y - top), size_t(w) * 3);
      std::memcpy(o + size_t(left + w) * 3, pad_row.data(), size_t(side - left - w) * 3);
    }
  }
  return out;
}

cv::Size resize_output_size(int64_t height, int64_t width, int64_t shortest_edge) {
  // short, long = (width, height) if width <= height else (height, width)
  // new_short, new_long = size, int(size * long / short)   (true division of exact ints, then truncation)
  const int64_t short_side = width <= height ? width : height;
  const int64_t long_side = width <= height ? height : width;
  const int64_t new_long = int64_t(double(shortest_edge * long_side) / double(short_side));
  return width <= height ? cv::Size(int(shortest_edge), int(new_long)) : cv::Size(int(new_long), int(shortest_edge));
}

cv::Mat center_crop(const cv::Mat& image, int height, int width) {
  TORCH_CHECK(height > 0 && width > 0, "center_crop: size must be positive, got ", height, "x", width);
  // Per axis: crop from (in - out) // 2 when the image is large enough, else paste at ceil((out - in) / 2).
  auto axis = [](int in, int out, int& src, int& dst, int& n) {
    if (in >= out) {
      src = (in - out) / 2, dst = 0, n = out;
    } else {
      src = 0, dst = (out - in + 1) / 2, n = in;
    }
  };
  int sy, dy, ny, sx, dx, nx;
  axis(image.rows, height, sy, dy, ny);
  axis(image.cols, width, sx, dx, nx);
  cv::Mat out = cv::Mat::zeros(height, width, image.type());
  image(cv::Rect(sx, sy, nx, ny)).copyTo(out(cv::Rect(dx, dy, nx, ny)));
  return out;
}

ImageProcessor::ImageProcessor(ImageProcessorConfig config, ImageReadOptions read_options)
    : config_(std::move(config)), read_options_(read_options) {
  const auto& c = config_;
  if (c.do_resize && !(c.shortest_edge > 0 || (c.resize_height > 0 && c.resize_width > 0)))
    throw std::invalid_argument("ImageProcessor: do_resize needs shortest_edge > 0 or resize_height/width > 0");
  if (c.do_center_crop && !(c.crop_height > 0 && c.crop_width > 0))
    throw std::invalid_argument("ImageProcessor: do_center_crop needs crop_height and crop_width > 0");
  if (c.resample != Resample::kBilinear && c.resample != Resample::kBicubic)
    throw std::invalid_argument("ImageProcessor: resample must be bilinear (2) or bicubic (3)");
  // Refuse, from the header, an image whose padded or resized form would not fit the pixel limit: copies of the
  // settings, not of `this`, so that a copied processor checks with its own.
  auto previous = read_options_.check_size;
  read_options_.check_size = [config = config_, previous, limit = read_options_.max_pixels](
                                 int64_t width, int64_t height, const std::string& where) {
    if (previous) previous(width, height, where);
    const int64_t pixels = image_intermediate_pixels(config, width, height);
    if (pixels > limit) {
      std::ostringstream msg;
      msg << where << ": a " << width << "x" << height << " image becomes " << double(pixels) / 1e6
          << " megapixels when " << (config.pad_to_square ? "padded to a square and " : "")
          << "resized, more than the limit of " << double(limit) / 1e6
          << " megapixels (ImageReadOptions::max_pixels); not decoded";
      throw ImageError(msg.str(), "image too large");
    }
  };
}

cv::Mat ImageProcessor::square_and_resize(const cv::Mat& rgb) const {
  TORCH_CHECK(rgb.type() == CV_8UC3 && !rgb.empty(), "ImageProcessor: expected a non-empty RGB image (CV_8UC3)");
  cv::Mat image = config_.pad_to_square ? expand_to_square(rgb, config_.pad_color()) : rgb;
  if (!config_.do_resize) return image;
  const cv::Size size = config_.shortest_edge > 0
                            ? resize_output_size(image.rows, image.cols, config_.shortest_edge)
                            : cv::Size(int(config_.resize_width), int(config_.resize_height));
  return pil_resize(image, size.width, size.height, config_.resample);
}

int64_t ImageProcessor::intermediate_pixels(int64_t width, int64_t height) const {
  return image_intermediate_pixels(config_, width, height);
}

int64_t image_intermediate_pixels(const ImageProcessorConfig& c, int64_t width, int64_t height) {
  int64_t w = std::max<int64_t>(width, 1), h = std::max<int64_t>(height, 1);
  if (c.pad_to_square) w = h = std::max(w, h);
  int64_t largest = w * h;  // both at most 2^31 (the formats' own limits): no overflow
  if (c.do_resize) {
    int64_t rw = c.resize_width, rh = c.resize_height;
    if (c.shortest_edge > 0) {  // the long side scaled as the short one, in floating point (no overflow)
      const double scale = double(c.shortest_edge) / double(std::min(w, h));
      const double rw_f = std::max(1.0, double(w) * scale), rh_f = std::max(1.0, double(h) * scale);
      if (rw_f * rh_f > 9e18) return INT64_MAX;
      rw = int64_t(rw_f), rh = int64_t(rh_f);
    }
    largest = std::max(largest, rw * rh);
  }
  return largest;
}

torch::Tensor ImageProcessor::process(const cv::Mat& rgb) const {
  cv::Mat image = square_and_resize(rgb);
  if (config_.do_center_crop) image = center_crop(image, int(config_.crop_height), int(config_.crop_width));
  const int64_t h = image.rows, w = image.cols;
  // The value of each uint8 level per channel, computed as numpy does it: rescale in float64 then cast to
  // float32 (image_transforms.rescale), normalise in float32 with float32 mean and std (normalize).
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    const float mean = float(config_.image_mean[c]), std = float(config_.image_std[c]);
    for (int v = 0; v < 256; ++v) {
      float x = config_.do_rescale ? float(double(v) * config_.rescale_factor) : float(v);
      if (config_.do_normalize) x = (x - mean) / std;
      table[c][v] = x;
    }
  }
  torch::Tensor out = torch::empty({3, h, w}, torch::kFloat32);  // (C, H, W)
  float* o = out.data_ptr<float>();
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* s = image.ptr<uint8_t>(int(y));
    for (int64_t x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) o[(c * h + y) * w + x] = table[c][s[x * 3 + c]];
  }
  return out;
}

torch::Tensor ImageProcessor::load(const std::string& path) const { return process(load_rgb(path, read_options_)); }

torch::Tensor mat_to_tensor(const cv::Mat& rgb) {
  TORCH_CHECK(rgb.type() == CV_8UC3, "mat_to_tensor: expected CV_8UC3");
  cv::Mat m = rgb.isContinuous() ? rgb : rgb.clone();
  return torch::from_blob(m.data, {m.rows, m.cols, 3}, torch::kUInt8).clone();  // (H, W, 3)
}

cv::Mat tensor_to_mat(const torch::Tensor& hwc) {
  TORCH_CHECK(hwc.dim() == 3 && hwc.size(2) == 3 && hwc.scalar_type() == torch::kUInt8,
              "tensor_to_mat: expected a uint8 (H, W, 3) tensor, got ", hwc.sizes(), " ", hwc.scalar_type());
  torch::Tensor t = hwc.contiguous().cpu();
  return cv::Mat(int(t.size(0)), int(t.size(1)), CV_8UC3, t.data_ptr<uint8_t>()).clone();
}

}  // namespace mole
