// Regression inputs of the hardening issue, one per finding class, each made here on the fly: JSON nested a million
// deep in every kind of file a user brings, a huge record id, images whose padded or resized form would need
// gigabytes, a zero-byte tensor with a million dimensions, and a device given as a data file. Each must end in a
// clear error or a counted skip, fast (the limit below is generous for a loaded CI machine).
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>

#include <opencv2/imgcodecs.hpp>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "data/image.h"
#include "data/llava_data.h"
#include "language/tokenizer.h"
#include "tests/language/tiny_tokenizer.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string nested(size_t depth, const std::string& inner = "0") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

// The message of what `f` throws (of type E), and that it came within the time limit.
template <class E>
std::string error_of(const std::function<void()>& f) {
  const auto start = std::chrono::steady_clock::now();
  std::string message = "(no error)";
  try {
    f();
  } catch (const E& e) {
    message = e.what();
  }
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 3.0);
  return message;
}

std::string safetensors_bytes(const std::string& header) {
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(char((uint64_t(header.size()) >> (8 * i)) & 255));
  return bytes + header;
}

}  // namespace

TEST_CASE("hostile inputs: JSON nested a million deep is an error naming the file, in every reader", "[unit][data]") {
  const std::string dir = mole::test::scratch_dir("hostile_json");
  const std::string deep = nested(1000000);

  write_bytes(dir + "/deep.safetensors",
              safetensors_bytes(R"({"w": {"dtype": "F32", "shape": )" + deep + R"(, "data_offsets": [0, 0]}})"));
  CHECK_THAT(error_of<FormatError>([&] { SafetensorsFile f(dir + "/deep.safetensors"); }),
             Contains("deep.safetensors") && Contains("nested deeper than 128 levels"));

  write_bytes(dir + "/model.safetensors.index.json", R"({"weight_map": {"w": )" + deep + "}}");
  CHECK_THAT(error_of<FormatError>([&] { TensorStore s(dir + "/model.safetensors.index.json"); }),
             Contains("model.safetensors.index.json") && Contains("nested deeper"));

  write_bytes(dir + "/run.json", R"({"model": {"init": )" + deep + "}}");
  CHECK_THAT(error_of<ConfigError>([&] { read_json_file(dir + "/run.json"); }),
             Contains("run.json") && Contains("nested deeper"));

  write_bytes(dir + "/preprocessor_config.json", R"({"size": )" + deep + "}");
  CHECK_THAT(error_of<ConfigError>([&] { ImageProcessorConfig::from_file(dir + "/preprocessor_config.json"); }),
             Contains("preprocessor_config.json") && Contains("nested deeper"));

  std::filesystem::create_directories(dir + "/tok");
  write_bytes(dir + "/tok/tokenizer.json", R"({"model": {"vocab": )" + deep + "}}");
  CHECK_THAT(error_of<TokenizerError>([&] { Tokenizer::load(dir + "/tok"); }),
             Contains("tokenizer.json") && Contains("nested deeper"));

  // Records: the deep one is skipped and counted, the others read; a huge id is cut short in every message.
  const std::string good = R"({"id": "ok", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]})";
  std::string huge_id = "[";
  for (int i = 0; i < 200000; ++i) huge_id += (i ? ",1" : "1");
  huge_id += "]";
  write_bytes(dir + "/data.json", "[" + good + R"(, {"id": )" + deep + R"(, "conversations": []}, {"id": )" + huge_id +
                                      R"(, "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]}])");
  LlavaDataset data;
  error_of<DataError>([&] { data = read_llava_dataset(dir + "/data.json"); });
  REQUIRE(data.records.size() == 2);
  CHECK(data.records[1].id.size() < 80);
  CHECK(data.skipped.counts().at("JSON nested too deep") == 1);

  // --set with a deep value: kept as the text it is, then refused by the field's type (no crash, no recursion)
  CHECK_THROWS(parse_json_text(deep));
  CHECK(parse_json_text(nested(128)).is_array());
  CHECK_THROWS_WITH(parse_json_text(nested(129)), Contains("nested deeper than 128 levels"));
  CHECK(parse_json_text(R"(["[[[[ in a string ]]]]"])").size() == 1);  // brackets in strings do not count
}

TEST_CASE("hostile inputs: a zero-byte tensor with a million dimensions is refused from its header",
          "[unit][safetensors]") {
  const std::string dir = mole::test::scratch_dir("hostile_rank");
  std::string shape = "[0";
  for (int i = 0; i < 1000000; ++i) shape += ",1";
  shape += "]";
  write_bytes(dir + "/rank.safetensors",
              safetensors_bytes(R"({"x": {"dtype": "F32", "shape": )" + shape + R"(, "data_offsets": [0, 0]}})"));
  CHECK_THAT(error_of<FormatError>([&] { SafetensorsFile f(dir + "/rank.safetensors"); }),
             Contains("tensor 'x'") && Contains("1000001 dimensions, more than 16"));
}

TEST_CASE("hostile inputs: a device or folder given as a data file is refused before anything is read",
          "[unit][data]") {
  CHECK_THAT(error_of<DataError>([] { read_llava_dataset("/dev/zero"); }),
             Contains("/dev/zero") && Contains("not a regular file"));
  CHECK_THAT(error_of<ConfigError>([] { read_json_file("/dev/zero"); }), Contains("not a regular file"));
  CHECK_THAT(error_of<ConfigError>([] { read_json_file("/tmp"); }), Contains("is a folder"));
  CHECK_THAT(error_of<std::runtime_error>([] { read_input_file("/dev/zero", "data", 1024); }),
             Contains("data /dev/zero"));
  const std::string dir = mole::test::scratch_dir("hostile_size");
  write_bytes(dir + "/big.json", std::string(4096, ' '));
  CHECK_THAT(error_of<std::runtime_error>([&] { read_input_file(dir + "/big.json", "data", 1024); }),
             Contains("4096 bytes, more than the 1024-byte limit"));
  std::string out;
  CHECK(mole::test::run_command(mole::test::mole_bin() + " check-data --data /dev/zero --images /tmp --tokenizer " +
                                    mole::test::tiny_tokenizer_dir(), &out) == 1);
  CHECK_THAT(out, Contains("/dev/zero") && Contains("not a regular file"));
}

TEST_CASE("hostile inputs: images whose padded or resized form would need gigabytes are refused from the header",
          "[unit][data]") {
  const std::string dir = mole::test::scratch_dir("hostile_images");
  ImageProcessorConfig llava;  // LLaVA-1.5: pad to a square, shortest edge 336, crop 336
  llava.pad_to_square = true;
  const ImageProcessor pad(llava);
  ImageProcessorConfig plain = llava;
  plain.pad_to_square = false;
  const ImageProcessor resize(plain);
  for (auto [w, h] : {std::pair<int, int>{64000, 1}, {20000, 1}, {1, 30000}}) {
    const std::string path = dir + "/" + std::to_string(w) + "x" + std::to_string(h) + ".png";
    REQUIRE(cv::imwrite(path, cv::Mat(h, w, CV_8UC3, cv::Scalar(10, 200, 30))));
    INFO(path << " (" << std::filesystem::file_size(path) << " bytes)");
    for (const ImageProcessor* p : {&pad, &resize}) {
      const std::string message = error_of<ImageError>([&] { p->load(path); });
      CHECK_THAT(message, Contains(path) && Contains("megapixels when") && Contains("not decoded"));
    }
  }
  CHECK(pad.intermediate_pixels(64000, 1) == int64_t(64000) * 64000);
  CHECK(resize.intermediate_pixels(64000, 1) == int64_t(64000) * 336 * 336);
  CHECK(pad.intermediate_pixels(640, 480) == 640 * 640);  // an ordinary photo passes
  const std::string photo = dir + "/photo.png";
  REQUIRE(cv::imwrite(photo, cv::Mat(480, 640, CV_8UC3, cv::Scalar(1, 2, 3))));
  CHECK(pad.load(photo).sizes() == torch::IntArrayRef{3, 336, 336});
}
