// Config JSON: the depth-checked parser, then the input read as a preprocessor_config.json and through a field
// list with nested structs, ranges and enums (the machinery every run, adapter and compare config uses). Errors
// must be ConfigError or json exceptions; a crash or a sanitizer report is a finding.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/fields.h"
#include "core/json_config.h"
#include "data/image.h"

namespace {

enum class Mode { kA, kB };

struct Inner {
  int64_t rank = 4;
  double ratio = 0.5;
  std::vector<int64_t> layers;
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("rank", self.rank, "", mole::between(1, 4096));
    v("ratio", self.ratio, "", mole::unit_open_above());
    v("layers", self.layers, "", mole::between(0, 100));
  }
};

struct Outer {
  std::string name;
  Mode mode = Mode::kA;
  std::optional<double> threshold;
  uint64_t seed = 0;
  Inner inner;
  std::vector<std::string> files;
  nlohmann::json init;
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("name", self.name, "");
    v("mode", self.mode, "");
    v("threshold", self.threshold, "", mole::at_least(0));
    v("seed", self.seed, "");
    v("inner", self.inner, "");
    v("files", self.files, "");
    v("init", self.init, "");
  }
};

}  // namespace

namespace mole {
MOLE_ENUM_NAMES(Mode, "mode", {Mode::kA, "a"}, {Mode::kB, "b"})
}  // namespace mole

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  nlohmann::json j;
  try {
    j = mole::parse_json_text(text, text + size);
  } catch (const std::exception&) {
    return 0;
  }
  try {
    (void)mole::read_fields<Outer>(j, "fuzz.json");
  } catch (const std::exception&) {
  }
  try {
    (void)mole::ImageProcessorConfig::from_json(j, "preprocessor_config.json").to_json().dump();
  } catch (const std::exception&) {
  }
  (void)mole::json_excerpt(j);
  return 0;
}
