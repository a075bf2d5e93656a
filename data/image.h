// Images for LLaVA-1.5 training: decoding files to RGB (OpenCV) and the CLIP preprocessing, exactly as LLaVA and
// transformers do it.
// Sources: LLaVA llava/train/train.py LazySupervisedDataset.__getitem__ (Image.open(path).convert("RGB"), then with
// image_aspect_ratio "pad" expand2square(image, tuple(int(x * 255) for x in image_mean)) from llava/mm_utils.py),
// then transformers' CLIPImageProcessor on its PIL backend (models/clip/image_processing_pil_clip.py,
// image_processing_backends.py PilBackend, image_transforms.py get_resize_output_image_size / resize /
// center_crop / rescale / normalize): resize the shortest edge to `size` with PIL's bicubic, centre crop, scale
// by 1/255, normalise with the CLIP mean and std. docs: docs/FORMATS.md "Images".
//
// H=height W=width C=channels (3, RGB)
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <torch/types.h>

#include "data/pil_resize.h"

namespace mole {

// A file that cannot be turned into an image: missing, unreadable, truncated, corrupt, not an image, of a format
// we do not decode, or too large. The message names the file and what is wrong.
// reason(): the short, file-independent category a data loader counts skips by: "image file missing",
// "image too large", "truncated image", "not an image", or "corrupt image".
struct ImageError : std::runtime_error {
  explicit ImageError(const std::string& message, std::string reason = "corrupt image")
      : std::runtime_error(message), reason_(std::move(reason)) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

// ---- decoding -------------------------------------------------------------------------------------------------

// Size limits. OpenCV's own guard (OPENCV_IO_MAX_IMAGE_PIXELS, default 2^30 pixels) is read from the environment
// when the library loads, too late to change from here; what bounds the decoders' allocations is that only the
// four formats whose headers inspect_image() reads reach OpenCV, and only within max_pixels.
struct ImageReadOptions {
  /// Largest width * height accepted, checked on the header before anything is decoded or allocated.
  int64_t max_pixels = 64'000'000;
  /// Largest file read into memory (a 64-megapixel uncompressed BMP is 192 MB).
  int64_t max_file_bytes = int64_t(256) << 20;
  /// Rotate/flip by the EXIF Orientation tag. Off by default: LLaVA and transformers open images with PIL's
  /// Image.open + convert("RGB"), which ignores the tag (OpenCV's imread would apply it), and the model was
  /// trained on the unrotated pixels.
  bool apply_exif_orientation = false;
  /// Called with the header's size before decoding; what it throws refuses the image (ImageProcessor checks that
  /// its padded and resized intermediates stay within max_pixels). Empty: none.
  std::function<void(int64_t width, int64_t height, const std::string& where)> check_size;
};

enum class ImageFormat { kPng, kJpeg, kWebp, kBmp };
const char* image_format_name(ImageFormat format);

// What the header says, found without decoding: format, size, and whether the data is complete.
struct ImageInfo {
  ImageFormat format = ImageFormat::kPng;
  int64_t width = 0, height = 0;
  // Empty when the structure is complete (PNG chunks through IEND, JPEG segments and scans through EOI, the WebP
  // RIFF size, the BMP pixel array); otherwise what is missing. Checked by walking the container, not decoding.
  std::string incomplete;
};

// Reads the header of an image in memory. Throws ImageError ("<where>: ...") for data that is not a PNG, JPEG,
// WebP or BMP (naming GIF, TIFF and others when recognised) and for headers that are malformed or cut short.
ImageInfo inspect_image(const uint8_t* data, size_t size, const std::string& where);

// Decodes an image file / in-memory image to RGB, CV_8UC3 (H, W, 3), as PIL's Image.open(f).convert("RGB"):
// grayscale is replicated to three channels, alpha (an alpha channel, or PNG tRNS transparency) is dropped
// without compositing, palettes are expanded, 1/2/4-bit grayscale is scaled to 0..255, 16-bit samples keep their
// high byte (as PIL does for 16-bit RGB PNGs; PIL clips 16-bit *grayscale* at 255 instead, making nearly all of
// such an image white, a quirk we do not reproduce). The size limit is enforced on the header, before decoding.
// Every failure is an ImageError naming `path` / `where`.
cv::Mat load_rgb(const std::string& path, const ImageReadOptions& options = {});
cv::Mat decode_rgb(const std::vector<uint8_t>& bytes, const std::string& where, const ImageReadOptions& options = {});

// ---- preprocessing --------------------------------------------------------------------------------------------

// The image part of preprocessor_config.json, plus LLaVA's pad-to-square choice. Defaults: LLaVA-1.5
// (openai/clip-vit-large-patch14-336).
struct ImageProcessorConfig {
  bool do_resize = true;
  /// size {"shortest_edge": N}: the shorter side becomes N, the longer int(N * long / short).
  int64_t shortest_edge = 336;
  /// size {"height", "width"}: resize to exactly this (used when shortest_edge is 0).
  int64_t resize_height = 0, resize_width = 0;
  bool do_center_crop = true;
  int64_t crop_height = 336, crop_width = 336;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean = {0.48145466, 0.4578275, 0.40821073};
  std::array<double, 3> image_std = {0.26862954, 0.26130258, 0.27577711};
  Resample resample = Resample::kBicubic;
  /// LLaVA's image_aspect_ratio == "pad": expand2square onto pad_color() before the processor. Not part of
  /// preprocessor_config.json (LLaVA keeps it in the model config); read from "pad_to_square",
  /// "image_aspect_ratio" ("pad" / "square") or LlavaImageProcessor's "do_pad" when a file has them.
  bool pad_to_square = true;

  // LLaVA's background: tuple(int(x * 255) for x in image_mean) = (122, 116, 104) for CLIP.
  std::array<uint8_t, 3> pad_color() const;

  // Reads a Hugging Face preprocessor_config.json object: size ({"shortest_edge"}, {"height", "width"}, or an
  // int, which is a shortest edge unless default_to_square is true), crop_size ({"height", "width"} or an int),
  // do_resize, do_center_crop, do_rescale, rescale_factor, do_normalize, image_mean, image_std (3 numbers or one),
  // resample (2 bilinear, 3 bicubic). "size" and "crop_size" are required when used: CLIPImageProcessor's own
  // defaults (224) differ from LLaVA-1.5's (336), so a missing one is an error rather than a guess. Other keys
  // (image_processor_type, processor_class, do_convert_rgb, ...) are ignored. Errors are ConfigError naming
  // `where` and the field.
  static ImageProcessorConfig from_json(const nlohmann::json& j, const std::string& where);
  static ImageProcessorConfig from_file(const std::string& path);
  // The same keys, as transformers writes them (size and crop_size as dicts), plus "pad_to_square".
  nlohmann::json to_json() const;
};

// expand2square: `rgb` centred on a square canvas of `color`, offset (w - h) // 2 along the short side; a square
// image is returned as is (shared, not copied).
cv::Mat expand_to_square(const cv::Mat& rgb, const std::array<uint8_t, 3>& color);

// get_resize_output_image_size(default_to_square=False): (height, width) after resizing the shortest edge.
cv::Size resize_output_size(int64_t height, int64_t width, int64_t shortest_edge);

// transformers' center_crop: offsets (in - out) // 2; where the image is smaller than the crop it is pasted at
// ceil((out - in) / 2) on zeros, as transformers pads.
cv::Mat center_crop(const cv::Mat& image, int height, int width);

// The whole pipeline on a decoded RGB image. Stateless apart from its configuration, so one instance can serve
// many data-loader threads.
// The largest image ImageProcessor::square_and_resize makes from a width x height input under `config`, in
// pixels (the padded square or the resized image, whichever is larger), computed without allocating. A 64000 x 1
// PNG is 142 bytes, but padded it is 4.1 gigapixels, and resized to a shortest edge of 336 it is 21.5M x 336.
int64_t image_intermediate_pixels(const ImageProcessorConfig& config, int64_t width, int64_t height);

class ImageProcessor {
 public:
  explicit ImageProcessor(ImageProcessorConfig config = {}, ImageReadOptions read_options = {});
  const ImageProcessorConfig& config() const { return config_; }
  const ImageReadOptions& read_options() const { return read_options_; }

  // expand2square (when pad_to_square) then the resize: uint8 (H', W', 3), before crop, rescale and normalise.
  cv::Mat square_and_resize(const cv::Mat& rgb) const;
  // image_intermediate_pixels under this processor's config.
  int64_t intermediate_pixels(int64_t width, int64_t height) const;
  // pixel_values: float32 (3, crop_height, crop_width) (or the resized size without do_center_crop).
  torch::Tensor process(const cv::Mat& rgb) const;
  // load_rgb + process.
  torch::Tensor load(const std::string& path) const;

 private:
  ImageProcessorConfig config_;
  ImageReadOptions read_options_;
};

// A uint8 (H, W, 3) cv::Mat as a uint8 tensor (H, W, 3) that owns a copy, and back (for tests and tools).
torch::Tensor mat_to_tensor(const cv::Mat& rgb);
cv::Mat tensor_to_mat(const torch::Tensor& hwc);

}  // namespace mole
