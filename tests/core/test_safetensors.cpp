// safetensors: round trips through save_safetensors / SafetensorsFile / TensorStore, dtype conversion on read,
// sharded indexes, and one hand-written bad file per validation rule, each error checked to name the file and
// what is wrong.
#include "core/safetensors.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include "tests/test_util.h"

namespace fs = std::filesystem;
using Catch::Contains;
using mole::FormatError;
using mole::SafetensorsFile;
using mole::TensorStore;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

// A safetensors file byte by byte: 8-byte little-endian header length (header.size() unless `length` is given),
// the header text, then `data_bytes` bytes of data.
void write_raw(const std::string& path, const std::string& header, size_t data_bytes, int64_t length = -1) {
  uint64_t n = length < 0 ? header.size() : uint64_t(length);
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes.push_back(char((n >> (8 * i)) & 0xff));
  bytes += header;
  bytes.append(data_bytes, '\0');
  write_bytes(path, bytes);
}

// The message of the FormatError that opening `path` throws ("" when it opens).
std::string open_error(const std::string& path) {
  try {
    SafetensorsFile file(path);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("safetensors round trip keeps names, dtypes, shapes, values and metadata", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_round_trip");
  std::string path = dir + "/model.safetensors";
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> tensors = {
      {"f64", torch::randn({2, 3}, torch::kFloat64)},
      {"f32", torch::randn({4})},
      {"f16", torch::randn({2, 2}).to(torch::kFloat16)},
      {"bf16", torch::randn({3, 1, 2}).to(torch::kBFloat16)},
      {"i64_scalar", torch::tensor(int64_t(-7))},
      {"i32", torch::arange(6, torch::kInt32).reshape({2, 3})},
      {"i16", torch::tensor({-3, 4}, torch::kInt16)},
      {"i8", torch::tensor({-128, 127, 0}, torch::kInt8)},
      {"u8", torch::tensor({0, 255}, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"empty", torch::zeros({0, 3})},
      {"transposed", torch::arange(6, torch::kFloat32).reshape({2, 3}).t()},  // not contiguous
  };
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "100"}};
  mole::save_safetensors(path, tensors, metadata);

  SafetensorsFile file(path);
  REQUIRE(file.names().size() == tensors.size());
  REQUIRE(file.metadata() == metadata);
  for (const auto& [name, expected] : tensors) {
    INFO(name);
    torch::Tensor got = file.tensor(name);
    REQUIRE(got.scalar_type() == expected.scalar_type());
    REQUIRE(got.sizes() == expected.sizes());
    REQUIRE(torch::equal(got, expected));
    REQUIRE(file.info(name).dtype == mole::safetensors_dtype_name(expected.scalar_type()));
  }
  REQUIRE(file.tensor("i64_scalar").dim() == 0);
  REQUIRE(file.info("empty").begin == file.info("empty").end);

  // Header padded with spaces so the data area starts at a multiple of 8, as the Rust writer does.
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len[i];
  REQUIRE((8 + header_len) % 8 == 0);

  // The same file through TensorStore: as a path, as a folder, and as the one *.safetensors of a folder.
  TensorStore by_path(path);
  TensorStore by_folder(dir);
  REQUIRE(by_path.n_files() == 1);
  REQUIRE(by_folder.names() == file.names());
  REQUIRE(torch::equal(by_folder.tensor("f32"), tensors[1].second));
  std::string adapter_dir = mole::test::scratch_dir("safetensors_adapter");
  fs::copy_file(path, adapter_dir + "/adapter_model.safetensors");
  REQUIRE(TensorStore(adapter_dir).contains("bf16"));
  REQUIRE_THROWS_WITH(by_folder.tensor("nope"), Contains(dir) && Contains("no tensor 'nope'"));
}

TEST_CASE("safetensors converts dtype on read", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_convert");
  torch::Tensor values = torch::tensor({1.5f, -2.25f, 3.0f});  // exact in bfloat16
  mole::save_safetensors(dir + "/bf16.safetensors", {{"w", values.to(torch::kBFloat16)}});
  mole::save_safetensors(dir + "/f32.safetensors", {{"w", values}});

  torch::Tensor as_f32 = SafetensorsFile(dir + "/bf16.safetensors").tensor("w", torch::kFloat32);
  REQUIRE(as_f32.scalar_type() == torch::kFloat32);
  REQUIRE(torch::equal(as_f32, values));
  torch::Tensor as_bf16 = SafetensorsFile(dir + "/f32.safetensors").tensor("w", torch::kBFloat16);
  REQUIRE(as_bf16.scalar_type() == torch::kBFloat16);
  REQUIRE(torch::equal(as_bf16, values.to(torch::kBFloat16)));
}

TEST_CASE("safetensors sharded index round trip", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_sharded");
  torch::Tensor a = torch::randn({2, 2}), b = torch::arange(5), c = torch::ones({3}, torch::kFloat16);
  mole::save_safetensors(dir + "/model-00001-of-00002.safetensors", {{"a", a}, {"b", b}});
  mole::save_safetensors(dir + "/model-00002-of-00002.safetensors", {{"c", c}});
  write_bytes(dir + "/model.safetensors.index.json",
              R"({"metadata": {"total_size": 42}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                 "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");

  for (const std::string& where : {dir, dir + "/model.safetensors.index.json"}) {
    INFO(where);
    TensorStore store(where);
    REQUIRE(store.n_files() == 2);
    REQUIRE(store.names() == std::vector<std::string>{"a", "b", "c"});
    REQUIRE(torch::equal(store.tensor("a"), a));
    REQUIRE(torch::equal(store.tensor("b"), b));
    REQUIRE(torch::equal(store.tensor("c", torch::kFloat32), torch::ones({3})));
    REQUIRE(store.file_of("c").path() == dir + "/model-00002-of-00002.safetensors");
    REQUIRE(store.info("b").dtype == "I64");
  }
}

TEST_CASE("safetensors rejects a file shorter than 8 bytes", "[unit][safetensors]") {
  std::string path = mole::test::scratch_dir("safetensors_short") + "/short.safetensors";
  write_bytes(path, "abcde");
  std::string error = open_error(path);
  REQUIRE_THAT(error, Contains(path) && Contains("shorter than"));
}

TEST_CASE("safetensors rejects a header length past the end of the file", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_header_len");
  std::string header = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  write_raw(dir + "/past.safetensors", header, 4, 1000);
  REQUIRE_THAT(open_error(dir + "/past.safetensors"),
               Contains(dir + "/past.safetensors") && Contains("header length 1000 runs past the end"));
  write_raw(dir + "/zero.safetensors", header, 4, 0);
  REQUIRE_THAT(open_error(dir + "/zero.safetensors"), Contains("header length is 0"));
  write_raw(dir + "/huge.safetensors", header, 4, int64_t(1) << 40);
  REQUIRE_THAT(open_error(dir + "/huge.safetensors"), Contains("exceeds the 100 MB limit"));
}

TEST_CASE("safetensors rejects a header that is not JSON or not an object", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_not_json");
  write_raw(dir + "/bad.safetensors", R"({"a": {"dtype": "F32",)", 0);
  REQUIRE_THAT(open_error(dir + "/bad.safetensors"),
               Contains(dir + "/bad.safetensors") && Contains("header is not valid JSON"));
  write_raw(dir + "/array.safetensors", "[1, 2]", 0);
  REQUIRE_THAT(open_error(dir + "/array.safetensors"), Contains("header is not a JSON object"));
  write_raw(dir + "/meta.safetensors", R"({"__metadata__": {"step": 3}})", 0);
  REQUIRE_THAT(open_error(dir + "/meta.safetensors"), Contains("__metadata__ value for 'step' is not a string"));
  write_raw(dir + "/extra.safetensors", R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"x":1}})", 4);
  REQUIRE_THAT(open_error(dir + "/extra.safetensors"), Contains("tensor 'a'") && Contains("unexpected field 'x'"));
  write_raw(dir + "/neg.safetensors", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4);
  REQUIRE_THAT(open_error(dir + "/neg.safetensors"), Contains("tensor 'a'") && Contains("non-negative"));
}

TEST_CASE("safetensors rejects an unknown dtype and names the tensor", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_dtype");
  write_raw(dir + "/unknown.safetensors", R"({"w.weight":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4);
  REQUIRE_THAT(open_error(dir + "/unknown.safetensors"),
               Contains(dir + "/unknown.safetensors") && Contains("tensor 'w.weight'") && Contains("unknown dtype 'F33'"));
  write_raw(dir + "/fp8.safetensors", R"({"w.weight":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4);
  REQUIRE_THAT(open_error(dir + "/fp8.safetensors"), Contains("tensor 'w.weight'") && Contains("not supported"));
  REQUIRE_THROWS_AS(mole::safetensors_dtype("F33"), FormatError);
  REQUIRE(mole::safetensors_dtype("BF16") == torch::kBFloat16);
}

TEST_CASE("safetensors rejects a size that disagrees with the shape", "[unit][safetensors]") {
  std::string path = mole::test::scratch_dir("safetensors_size") + "/size.safetensors";
  write_raw(path, R"({"good":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "bad":{"dtype":"F32","shape":[3],"data_offsets":[8,16]}})", 16);
  REQUIRE_THAT(open_error(path), Contains(path) && Contains("tensor 'bad'") && Contains("is 12 bytes") &&
                                     Contains("hold 8"));
}

TEST_CASE("safetensors rejects overlapping ranges and names both tensors", "[unit][safetensors]") {
  std::string path = mole::test::scratch_dir("safetensors_overlap") + "/overlap.safetensors";
  write_raw(path, R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "empty":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},
                     "second":{"dtype":"I32","shape":[2],"data_offsets":[4,12]}})", 12);
  REQUIRE_THAT(open_error(path), Contains(path) && Contains("'first'") && Contains("'second'") && Contains("overlap"));
}

TEST_CASE("safetensors rejects a truncated data area and names the tensor past the end", "[unit][safetensors]") {
  std::string path = mole::test::scratch_dir("safetensors_truncated") + "/truncated.safetensors";
  write_raw(path, R"({"head":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
                     "tail":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 12);
  std::string error = open_error(path);
  REQUIRE_THAT(error, Contains(path) && Contains("tensor 'tail'") && Contains("past the end of the data area"));
  REQUIRE_THAT(error, !Contains("'head'"));
}

TEST_CASE("safetensors sharded index errors name the index, shard and tensor", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_bad_index");
  std::string index = dir + "/model.safetensors.index.json";
  mole::save_safetensors(dir + "/one.safetensors", {{"a", torch::ones({1})}});
  mole::save_safetensors(dir + "/two.safetensors", {{"b", torch::ones({1})}, {"a", torch::ones({1})}});
  mole::save_safetensors(dir + "/three.safetensors", {{"c", torch::ones({1})}});

  SECTION("a tensor missing from the shard the index names") {
    write_bytes(index, R"({"weight_map": {"a": "one.safetensors", "c": "one.safetensors"}})");
    REQUIRE_THROWS_WITH(TensorStore(dir),
                        Contains(index) && Contains("tensor 'c'") && Contains("one.safetensors") &&
                            Contains("does not contain it"));
  }
  SECTION("a shard file that does not exist") {
    write_bytes(index, R"({"weight_map": {"a": "one.safetensors", "z": "missing.safetensors"}})");
    REQUIRE_THROWS_WITH(TensorStore(index),
                        Contains(index) && Contains("shard 'missing.safetensors'") && Contains("tensor 'z'") &&
                            Contains("does not exist"));
  }
  SECTION("a tensor in two shards") {
    write_bytes(index, R"({"weight_map": {"a": "one.safetensors", "b": "two.safetensors"}})");
    REQUIRE_THROWS_WITH(TensorStore(index), Contains(index) && Contains("tensor 'a' is in two shards"));
  }
  SECTION("an index without a weight_map") {
    write_bytes(index, R"({"metadata": {}})");
    REQUIRE_THROWS_WITH(TensorStore(index), Contains(index) && Contains("weight_map"));
  }
}

TEST_CASE("save_safetensors is atomic and rejects bad names", "[unit][safetensors]") {
  std::string dir = mole::test::scratch_dir("safetensors_atomic");
  std::string path = dir + "/out.safetensors";
  mole::save_safetensors(path, {{"x", torch::ones({2})}});
  mole::save_safetensors(path, {{"y", torch::zeros({3})}});  // replaces the first file whole
  REQUIRE(files_in(dir) == std::vector<std::string>{"out.safetensors"});
  REQUIRE(SafetensorsFile(path).names() == std::vector<std::string>{"y"});

  std::string nowhere = dir + "/no_such_folder/out.safetensors";
  REQUIRE_THROWS_WITH(mole::save_safetensors(nowhere, {{"x", torch::ones({2})}}), Contains(nowhere));
  REQUIRE(files_in(dir) == std::vector<std::string>{"out.safetensors"});

  REQUIRE_THROWS_WITH(mole::save_safetensors(path, {{"", torch::ones({1})}}), Contains("empty tensor name"));
  REQUIRE_THROWS_WITH(mole::save_safetensors(path, {{"x", torch::ones({1})}, {"x", torch::ones({1})}}),
                      Contains(path) && Contains("'x' given twice"));
  REQUIRE_THROWS_WITH(mole::save_safetensors(path, {{"c", torch::ones({1}, torch::kComplexFloat)}}),
                      Contains("tensor 'c'") && Contains("no safetensors name"));
  // The rejected saves left the previous file as it was.
  REQUIRE(SafetensorsFile(path).names() == std::vector<std::string>{"y"});
  REQUIRE(files_in(dir) == std::vector<std::string>{"out.safetensors"});
}
