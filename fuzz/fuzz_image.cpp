// An image file: header inspection, decoding (within a small pixel limit, so the fuzzer stays fast) and LLaVA-1.5
// preprocessing (pad to square, bicubic resize, crop, normalise). Errors must be ImageError or another
// std::exception; a crash or a sanitizer report is a finding.
#include <cstdint>
#include <vector>

#include "data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mole::ImageProcessor processor = [] {
    mole::ImageProcessorConfig c;
    c.shortest_edge = 32;
    c.crop_height = c.crop_width = 32;
    mole::ImageReadOptions o;
    o.max_pixels = 1 << 20;
    return mole::ImageProcessor(c, o);
  }();
  try {
    const std::vector<uint8_t> bytes(data, data + size);
    (void)processor.process(mole::decode_rgb(bytes, "input", processor.read_options()));
  } catch (const std::exception&) {
  }
  return 0;
}
