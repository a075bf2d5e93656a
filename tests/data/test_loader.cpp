// The threaded data loader: the corrupted-data run (each bad record skipped and reported by reason, the run
// finishing), deterministic order independent of the worker count, exact mid-epoch resume, padding, length
// grouping, and samples that would train on nothing reported instead of trained.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <torch/torch.h>

#include "data/data_check.h"
#include "data/loader.h"
#include "tests/language/tiny_tokenizer.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;

namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A PNG whose header claims 20000 x 20000 pixels (1.2 GB as RGB) with a one-byte IDAT: a decompression bomb
// in shape. CRCs are not checked by the header walk, so zeros do.
std::string huge_png_header() {
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char((v >> 16) & 255), char((v >> 8) & 255), char(v & 255)};
  };
  std::string png = "\x89PNG\r\n\x1a\n";
  png += be32(13) + "IHDR" + be32(20000) + be32(20000) + std::string("\x08\x02\x00\x00\x00", 5) + be32(0);
  png += be32(1) + "IDAT" + std::string(1, '\0') + be32(0);
  png += be32(0) + "IEND" + be32(0);
  return png;
}

void write_image(const std::string& path, int seed) {
  cv::Mat bgr(24 + seed % 5, 20 + seed % 7, CV_8UC3, cv::Scalar(10 * seed % 255, 40, 200 - seed % 100));
  cv::circle(bgr, {8, 8}, 5, cv::Scalar(255, 255, 255), -1);
  REQUIRE(cv::imwrite(path, bgr));
}

std::string record(const std::string& id, const std::string& image, const std::string& question,
                   const std::string& answer) {
  std::string r = R"({"id": ")" + id + "\", ";
  if (!image.empty()) r += R"("image": ")" + image + "\", ";
  return r + R"("conversations": [{"from": "human", "value": ")" + question +
         R"("}, {"from": "gpt", "value": ")" + answer + "\"}]}";
}

struct Fixture {
  std::string dir, data;
  std::shared_ptr<const Tokenizer> tokenizer;
  std::shared_ptr<const ImageProcessor> images;
};

ImageProcessorConfig small_images() {
  ImageProcessorConfig c;
  c.shortest_edge = 16;
  c.crop_height = c.crop_width = 16;
  return c;
}

// n_good good records (images and text-only, of varying lengths) plus, when `corrupt`, one record of each kind
// of damage the data issue names.
Fixture make_dataset(const std::string& tag, int n_good, bool corrupt) {
  Fixture f;
  f.dir = mole::test::scratch_dir(tag);
  std::filesystem::create_directories(f.dir + "/img");
  std::string text = "[";
  const std::vector<std::string> colours = {"red", "blue", "green", "white"};
  for (int i = 0; i < n_good; ++i) {
    std::string answer = "The circle is " + colours[size_t(i) % 4] + ".";
    for (int k = 0; k < i % 5; ++k) answer += " It is " + colours[size_t(i + k) % 4] + ".";
    if (i % 3 == 2) {
      text += record("g" + std::to_string(i), "", "What colour is the square?", answer) + ",\n";
    } else {
      write_image(f.dir + "/img/g" + std::to_string(i) + ".png", i);
      text += record("g" + std::to_string(i), "g" + std::to_string(i) + ".png", "<image>\\nWhat colour is it?",
                     answer) + ",\n";
    }
  }
  if (corrupt) {
    write_image(f.dir + "/img/whole.jpg", 7);
    std::ifstream in(f.dir + "/img/whole.jpg", std::ios::binary);
    std::string jpeg((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_bytes(f.dir + "/img/truncated.jpg", jpeg.substr(0, jpeg.size() / 2));
    write_bytes(f.dir + "/img/text.jpg", "this is a text file, not a JPEG\n");
    write_bytes(f.dir + "/img/huge.png", huge_png_header());
    write_image(f.dir + "/img/one.png", 3);
    text += record("bad_truncated", "truncated.jpg", "<image>\\nWhat is it?", "A circle.") + ",\n";
    text += record("bad_missing", "no_such_file.jpg", "<image>\\nWhat is it?", "A circle.") + ",\n";
    text += record("bad_not_image", "text.jpg", "<image>\\nWhat is it?", "A circle.") + ",\n";
    text += R"({"id": "bad_no_conversations", "image": "one.png"})" ",\n";
    text += record("bad_two_tags", "one.png", "<image>\\nWhat is it? <image>", "A circle.") + ",\n";
    text += record("bad_huge", "huge.png", "<image>\\nWhat is it?", "A circle.") + ",\n";
    text += std::string(R"({"id": "bad_utf8", "conversations": [{"from": "human", "value": "caf)") + "\xC3\x28" +
            R"("}, {"from": "gpt", "value": "Yes."}]})" ",\n";
    // Records of the shapes users bring from other tools: all good (kOddGood), then the bad two-image one and
    // one the tests make fail for an unforeseen reason through LoaderOptions::sample_hook (bad_injected).
    write_image(f.dir + "/img/two.png", 5);
    text += R"({"id": "odd_two_images", "image": ["one.png", "two.png"], "conversations": [{"from": "human",
              "value": "<image> or <image>: which is brighter?"}, {"from": "gpt", "value": "The second."}]},)" "\n";
    text += R"({"id": "odd_gpt_first", "image": "one.png", "conversations": [{"from": "gpt", "value": "Ask me."},
              {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A circle."}]},)" "\n";
    text += R"({"id": "odd_system", "conversations": [{"from": "system", "value": "Answer briefly."},
              {"from": "human", "value": "What is one plus one?"}, {"from": "gpt", "value": "Two."}]},)" "\n";
    text += R"({"id": "odd_messages", "images": ["one.png"], "messages": [{"role": "user", "content": "<image>What is it?"},
              {"role": "assistant", "content": "A circle."}]},)" "\n";
    text += R"({"id": "odd_no_tag", "image": "two.png", "conversations": [{"from": "human", "value": "What is it?"},
              {"from": "gpt", "value": "A circle."}]},)" "\n";
    text += R"({"id": "odd_parts", "image": "one.png", "messages": [{"role": "user", "content": [{"type": "image"},
              {"type": "text", "text": "Describe it."}]}, {"role": "assistant", "content": "A white circle."}]},)" "\n";
    text += R"({"id": "bad_two_images_one_tag", "image": ["one.png", "two.png"], "conversations": [{"from": "human",
              "value": "<image>\nWhich?"}, {"from": "gpt", "value": "The first."}]},)" "\n";
    text += record("bad_injected", "one.png", "<image>\\nWhat is it?", "A circle.") + ",\n";
  }
  text += record("last", "", "What is two plus two?", "Four.") + "]";
  f.data = f.dir + "/data.json";
  write_bytes(f.data, text);
  f.tokenizer = std::make_shared<const Tokenizer>(mole::test::tiny_tokenizer());
  f.images = std::make_shared<const ImageProcessor>(small_images());
  return f;
}

const std::vector<std::string> kOddGood = {"odd_two_images", "odd_gpt_first", "odd_system",
                                           "odd_messages",   "odd_no_tag",    "odd_parts"};

// The unforeseen failure the corrupted-data tests inject into one record whose image and text are fine.
void inject_failure(const LlavaRecord& record) {
  if (record.id == "bad_injected") throw std::runtime_error("injected failure");
}

LoaderOptions small_options(const Fixture& f) {
  LoaderOptions o;
  o.batch_size = 4;
  o.n_workers = 2;
  o.prefetch_batches = 3;
  o.seed = 17;
  o.n_image_tokens = 4;
  o.max_len = 256;
  o.image_dir = f.dir + "/img";
  return o;
}

std::vector<Batch> drain(DataLoader& loader, int64_t limit = -1) {
  std::vector<Batch> out;
  while (limit < 0 || int64_t(out.size()) < limit) {
    auto b = loader.next();
    if (!b) break;
    out.push_back(std::move(*b));
  }
  return out;
}

void check_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].epoch == b[i].epoch);
    CHECK(a[i].index == b[i].index);
    CHECK(a[i].ids == b[i].ids);
    CHECK(torch::equal(a[i].input_ids, b[i].input_ids));
    CHECK(torch::equal(a[i].labels, b[i].labels));
    CHECK(torch::equal(a[i].attention_mask, b[i].attention_mask));
    REQUIRE(a[i].pixel_values.defined() == b[i].pixel_values.defined());
    if (a[i].pixel_values.defined()) CHECK(torch::equal(a[i].pixel_values, b[i].pixel_values));
  }
}

}  // namespace

TEST_CASE("corrupted dataset: the loader finishes and skips exactly the bad records, each by reason",
          "[unit][data][loader]") {
  Fixture f = make_dataset("loader_corrupt", 10, true);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  LoaderOptions o = small_options(f);
  o.n_epochs = 2;  // bad records are counted once, not once per epoch
  o.sample_hook = inject_failure;
  DataLoader loader(dataset, f.tokenizer, f.images, o);
  std::vector<Batch> batches = drain(loader);

  std::multiset<std::string> seen;
  int64_t n_images = 0;
  for (const Batch& b : batches) {
    for (const std::string& id : b.ids) seen.insert(id);
    n_images += b.pixel_values.defined() ? b.pixel_values.size(0) : 0;
    // every image id block is filled by an image: ids = images x n_image_tokens, batch by batch
    CHECK((b.input_ids == f.tokenizer->image_token_id()).sum().item<int64_t>() ==
          (b.pixel_values.defined() ? b.pixel_values.size(0) : 0) * o.n_image_tokens);
  }
  for (int i = 0; i < 10; ++i) CHECK(seen.count("g" + std::to_string(i)) == 2);
  for (const std::string& id : kOddGood) CHECK(seen.count(id) == 2);
  CHECK(seen.count("last") == 2);
  CHECK(seen.size() == 2 * (11 + kOddGood.size()));  // nothing else got in
  CHECK(n_images == 2 * (7 + 6));  // g0 g1 g3 g4 g6 g7 g9, and the odd ones: two + one + one + one + one

  const SkipReport report = loader.skip_report();
  const std::map<std::string, int64_t> expected = {
      {"truncated image", 1},    {"image file missing", 1},  {"not an image", 1},
      {"no conversations", 1},   {"<image> tags (2) do not match images (1)", 1},
      {"image too large", 1},    {"invalid UTF-8", 1},       {"<image> tags (1) do not match images (2)", 1},
      {"sample failed: injected failure", 1}};
  CHECK(report.counts() == expected);
  CHECK(report.total() == 9);
  const auto j = report.to_json();
  CHECK(j["reasons"]["sample failed: injected failure"]["first_ids"] == nlohmann::json::array({"bad_injected"}));
  CHECK(j["reasons"]["sample failed: injected failure"]["first_files"] == nlohmann::json::array({f.data}));
  CHECK(j["reasons"]["invalid UTF-8"]["first_files"] == nlohmann::json::array({f.data}));

  SECTION("check_dataset, what mole check-data runs, reports exactly the same") {
    const DataCheck check = check_dataset(dataset, f.tokenizer, f.images, o);
    CHECK(check.skipped.to_json() == report.to_json());
    CHECK(check.usable_samples == int64_t(11 + kOddGood.size()));
    CHECK(check.images == 7 + 6);
  }
  CHECK(j["reasons"]["truncated image"]["first_ids"] == nlohmann::json::array({"bad_truncated"}));
  CHECK(j["reasons"]["image file missing"]["first_ids"] == nlohmann::json::array({"bad_missing"}));
  CHECK(j["reasons"]["not an image"]["first_ids"] == nlohmann::json::array({"bad_not_image"}));
  CHECK(j["reasons"]["image too large"]["first_ids"] == nlohmann::json::array({"bad_huge"}));
  CHECK(j["reasons"]["no conversations"]["first_ids"] == nlohmann::json::array({"bad_no_conversations"}));

  SECTION("strict mode stops at the first bad record and names it") {
    LoaderOptions strict = o;
    strict.strict = true;
    CHECK_THROWS_WITH(read_llava_dataset(f.data, true), Contains("bad_no_conversations"));
    // Records the reader accepts but whose images are bad stop the loader instead.
    auto images_bad = std::make_shared<LlavaDataset>(*dataset);
    DataLoader strict_loader(images_bad, f.tokenizer, f.images, strict);
    CHECK_THROWS_AS(drain(strict_loader), DataError);
  }
}

TEST_CASE("loader batches: right padding, labels, masks and stacked images", "[unit][data][loader]") {
  Fixture f = make_dataset("loader_padding", 9, false);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  LoaderOptions o = small_options(f);
  o.shuffle = false;
  DataLoader loader(dataset, f.tokenizer, f.images, o);
  std::vector<Batch> batches = drain(loader);
  REQUIRE(batches.size() == 3);  // 10 records, batches of 4: 4 + 4 + 2
  CHECK(batches[2].size() == 2);
  const int64_t image_id = f.tokenizer->image_token_id();
  for (const Batch& b : batches) {
    const int64_t longest = *std::max_element(b.lengths.begin(), b.lengths.end());
    REQUIRE(b.input_ids.sizes() == torch::IntArrayRef{b.size(), longest});
    int64_t n_images = 0;
    for (int64_t i = 0; i < b.size(); ++i) {
      const int64_t len = b.lengths[size_t(i)];
      CHECK(b.attention_mask[i].sum().item<int64_t>() == len);
      CHECK(b.attention_mask[i].slice(0, 0, len).all().item<bool>());
      CHECK((b.labels[i].slice(0, len) == kIgnoreIndex).all().item<bool>());
      CHECK((b.input_ids[i].slice(0, len) == f.tokenizer->pad_id()).all().item<bool>());
      CHECK(b.input_ids[i][0].item<int64_t>() == f.tokenizer->bos_id());
      const int64_t image_ids = (b.input_ids[i] == image_id).sum().item<int64_t>();
      CHECK((image_ids == 0 || image_ids == 4));
      n_images += image_ids / 4;
    }
    CHECK(b.n_tokens == b.attention_mask.sum().item<int64_t>());
    CHECK(b.n_supervised == (b.labels != kIgnoreIndex).sum().item<int64_t>());
    if (n_images == 0) {
      CHECK(!b.pixel_values.defined());
    } else {
      REQUIRE(b.pixel_values.defined());
      CHECK(b.pixel_values.sizes() == torch::IntArrayRef{n_images, 3, 16, 16});
    }
  }
  // In file order without shuffling; g2 is text-only, g0 has an image.
  CHECK(batches[0].ids == std::vector<std::string>{"g0", "g1", "g2", "g3"});
}

TEST_CASE("token families: each sample's tokens carry its record's family and padding -1, padded and packed",
          "[unit][data][loader]") {
  Fixture f = make_dataset("loader_families", 9, false);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  for (bool packing : {false, true}) {
    DYNAMIC_SECTION((packing ? "packed" : "padded")) {
      LoaderOptions o = small_options(f);
      o.shuffle = false;
      o.packing = packing;
      o.family_source = FamilySource::kImageFolder;  // images at the top of the folder: ".", text-only: "text"
      DataLoader loader(dataset, f.tokenizer, f.images, o);
      REQUIRE(loader.families().names == std::vector<std::string>{".", "text"});
      for (const Batch& b : drain(loader)) {
        REQUIRE(b.token_family.defined());
        REQUIRE(b.token_family.sizes() == b.input_ids.sizes());
        CHECK(((b.token_family == -1) == (b.attention_mask == 0)).all().item<bool>());
        // walk the samples in order through the rows
        int64_t sample = 0;
        const int64_t rows = b.input_ids.size(0);
        for (int64_t row = 0; row < rows; ++row) {
          const std::vector<int64_t> lengths =
              packing ? b.packed_rows[size_t(row)] : std::vector<int64_t>{b.lengths[size_t(row)]};
          int64_t start = 0;
          for (int64_t len : lengths) {
            const std::string& id = b.ids[size_t(sample)];
            const int64_t number = id == "last" ? 2 : std::stoll(id.substr(1));  // "last" is text-only
            const int64_t expected = number % 3 == 2 ? 1 : 0;
            INFO(id);
            CHECK((b.token_family[row].slice(0, start, start + len) == expected).all().item<bool>());
            start += len, ++sample;
          }
        }
        CHECK(sample == b.size());
      }
    }
  }
  LoaderOptions none = small_options(f);  // no families: no tensor
  DataLoader loader(dataset, f.tokenizer, f.images, none);
  CHECK(loader.families().names.empty());
  CHECK(!loader.next()->token_family.defined());
}

TEST_CASE("loader order depends on seed and epoch only, not on the worker count", "[unit][data][loader]") {
  Fixture f = make_dataset("loader_order", 21, false);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  LoaderOptions o = small_options(f);
  o.n_epochs = 2;
  std::vector<std::vector<Batch>> runs;
  for (int64_t workers : {0, 1, 2, 3}) {
    LoaderOptions w = o;
    w.n_workers = workers;
    w.prefetch_batches = 1 + workers;
    DataLoader loader(dataset, f.tokenizer, f.images, w);
    runs.push_back(drain(loader));
  }
  for (size_t r = 1; r < runs.size(); ++r) check_same_batches(runs[0], runs[r]);

  // Each epoch holds every record once, in a different order.
  std::vector<std::string> epoch0, epoch1;
  for (const Batch& b : runs[0]) (b.epoch == 0 ? epoch0 : epoch1).insert((b.epoch == 0 ? epoch0 : epoch1).end(),
                                                                         b.ids.begin(), b.ids.end());
  CHECK(epoch0.size() == 22);
  CHECK(std::set<std::string>(epoch0.begin(), epoch0.end()).size() == 22);
  CHECK(std::set<std::string>(epoch0.begin(), epoch0.end()) == std::set<std::string>(epoch1.begin(), epoch1.end()));
  CHECK(epoch0 != epoch1);

  LoaderOptions other = o;
  other.seed = 18;
  DataLoader reseeded(dataset, f.tokenizer, f.images, other);
  CHECK(drain(reseeded, 1)[0].ids != runs[0][0].ids);
}

TEST_CASE("loader resumes mid-epoch and across epochs exactly", "[unit][data][loader]") {
  Fixture f = make_dataset("loader_resume", 13, true);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  LoaderOptions o = small_options(f);
  o.n_epochs = 3;
  DataLoader straight(dataset, f.tokenizer, f.images, o);
  std::vector<Batch> all = drain(straight);
  REQUIRE(all.size() == size_t(3 * straight.batches_per_epoch()));

  for (size_t cut : {size_t(2), size_t(straight.batches_per_epoch()), size_t(all.size() - 1)}) {
    DataLoader first(dataset, f.tokenizer, f.images, o);
    std::vector<Batch> head = drain(first, int64_t(cut));
    const LoaderState state = LoaderState::from_json(nlohmann::json::parse(first.state().to_json().dump()));
    CHECK(state.epoch == int64_t(cut) / straight.batches_per_epoch());
    DataLoader resumed(dataset, f.tokenizer, f.images, o, state);
    std::vector<Batch> tail = drain(resumed);
    head.insert(head.end(), std::make_move_iterator(tail.begin()), std::make_move_iterator(tail.end()));
    check_same_batches(all, head);
  }

  SECTION("a state saved on other data is refused") {
    LoaderState state = straight.state();
    state.n_records += 1;
    CHECK_THROWS_WITH(DataLoader(dataset, f.tokenizer, f.images, o, state), Contains("cannot resume"));
    LoaderOptions other = o;
    other.batch_size = 5;
    CHECK_THROWS_AS(DataLoader(dataset, f.tokenizer, f.images, other, straight.state()), DataError);
  }
}

TEST_CASE("length-grouped batches hold similar lengths, the longest batch first", "[unit][data][loader]") {
  std::vector<int64_t> lengths;
  for (int64_t i = 0; i < 1000; ++i) lengths.push_back((i * 7919) % 997 + 3);
  LoaderOptions o;
  o.batch_size = 8;
  o.group_by_length = true;
  auto grouped = epoch_batches(lengths, o, 5, 0);
  o.group_by_length = false;
  auto plain = epoch_batches(lengths, o, 5, 0);
  auto padding = [&](const std::vector<std::vector<int64_t>>& batches) {
    int64_t pad = 0;
    for (const auto& b : batches) {
      int64_t m = 0;
      for (int64_t i : b) m = std::max(m, lengths[size_t(i)]);
      for (int64_t i : b) pad += m - lengths[size_t(i)];
    }
    return pad;
  };
  CHECK(padding(grouped) * 5 < padding(plain));  // far less padding
  std::vector<int64_t> all;
  for (const auto& b : grouped) all.insert(all.end(), b.begin(), b.end());
  std::sort(all.begin(), all.end());
  for (int64_t i = 0; i < 1000; ++i) REQUIRE(all[size_t(i)] == i);  // every record once
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  CHECK(std::count(grouped[0].begin(), grouped[0].end(),
                   std::find(lengths.begin(), lengths.end(), longest) - lengths.begin()) == 1);
  CHECK(epoch_batches(lengths, {}, 5, 1) != epoch_batches(lengths, {}, 5, 0));
}

TEST_CASE("a sample that would lose all supervised tokens is reported, not trained", "[unit][data][loader]") {
  Fixture f = make_dataset("loader_no_supervision", 6, false);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  LoaderOptions o = small_options(f);
  // Long enough for every prompt with its image but not for the answers of the image records: those would be
  // cut entirely and trained with zero loss.
  o.conversation_template = Template::kPlain;
  o.max_len = 1 + 4;  // BOS + the image block
  DataLoader loader(dataset, f.tokenizer, f.images, o);
  std::vector<Batch> batches = drain(loader);
  for (const Batch& b : batches) {
    CHECK(b.n_supervised > 0);
    for (int64_t i = 0; i < b.size(); ++i) CHECK((b.labels[i] != kIgnoreIndex).any().item<bool>());
  }
  const auto counts = loader.skip_report().counts();
  REQUIRE(counts.count("no supervised tokens after truncation"));
  CHECK(counts.at("no supervised tokens after truncation") == 4);  // g0 g1 g3 g4 carry images
}

TEST_CASE("mole check-data reports the corrupted dataset and exits 0, and 1 on a file that is not LLaVA data",
          "[unit][data][loader][cli]") {
  Fixture f = make_dataset("check_data_cli", 5, true);
  const std::string tok = mole::test::tiny_tokenizer_dir();
  const std::string pre = f.dir + "/preprocessor_config.json";
  write_bytes(pre, small_images().to_json().dump());
  std::string out;
  const std::string base = mole::test::mole_bin() + " check-data --tokenizer " + tok + " --images " + f.dir +
                           "/img --image-tokens 4 --preprocessor " + pre;
  REQUIRE(mole::test::run_command(base + " --data " + f.data + " --json", &out) == 0);
  const auto report = nlohmann::json::parse(out);
  CHECK(report["records"] == 13 + 8);
  CHECK(report["usable_samples"] == 6 + 6 + 1);  // bad_injected is good without the test's hook
  CHECK(report["images"] == 4 + 6 + 1);  // g0 g1 g3 g4 (g2 and "last" are text-only), the odd ones, bad_injected
  CHECK(report["skipped"]["total"] == 8);
  CHECK(report["skipped"]["reasons"]["image too large"]["first_ids"][0] == "bad_huge");
  CHECK(report["tokens_max"].get<int64_t>() > 4);

  REQUIRE(mole::test::run_command(base + " --data " + f.data, &out) == 0);
  CHECK_THAT(out, Contains("1 x truncated image (e.g. bad_truncated in " + f.data + ")"));
  CHECK_THAT(out, Contains("skipped: 8"));

  CHECK(mole::test::run_command(base + " --data " + f.data + " --strict", &out) == 1);
  CHECK_THAT(out, Contains("bad_no_conversations"));

  write_bytes(f.dir + "/not_llava.json", R"([{"question_id": 1, "text": "What?"}, {"question_id": 2}])");
  CHECK(mole::test::run_command(base + " --data " + f.dir + "/not_llava.json", &out) == 1);
  CHECK_THAT(out, Contains("not a LLaVA conversation file"));
  CHECK(mole::test::run_command(base + " --data " + f.dir + "/missing.json", &out) == 1);
}

TEST_CASE("a dataset whose every record is bad stops the loader with the skip report instead of spinning",
          "[unit][data][loader]") {
  const std::string dir = mole::test::scratch_dir("loader_all_bad");
  std::string text = "[";
  for (int i = 0; i < 5; ++i)
    text += (i ? ",\n" : "") + record("r" + std::to_string(i), "gone.png", "<image>\\nWhat?", "A.");
  write_bytes(dir + "/data.json", text + "]");
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(dir + "/data.json"));
  LoaderOptions o;
  o.batch_size = 2;
  o.n_epochs = 0;  // no end: only the check stops it
  o.n_image_tokens = 4;
  o.image_dir = dir;
  DataLoader loader(dataset, std::make_shared<const Tokenizer>(mole::test::tiny_tokenizer()),
                    std::make_shared<const ImageProcessor>(small_images()), o);
  CHECK_THROWS_WITH(loader.next(), Contains("without one usable sample") && Contains("5 x image file missing"));
}

TEST_CASE("data-parallel shards: rank r takes batches r, r+W, ... of the one stream, disjoint, and resumes",
          "[unit][data][loader][dist]") {
  Fixture f = make_dataset("loader_shards", 17, true);
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(f.data));
  LoaderOptions o = small_options(f);
  o.n_epochs = 3;  // an epoch of 5 batches does not divide among 2 or 3 ranks: the shards run across epoch ends
  DataLoader one(dataset, f.tokenizer, f.images, o);
  const std::vector<Batch> stream = drain(one);
  for (int64_t world : {2, 3}) {
    std::vector<std::vector<Batch>> shards;
    for (int64_t rank = 0; rank < world; ++rank) {
      LoaderOptions r = o;
      r.rank = rank, r.world_size = world;
      DataLoader loader(dataset, f.tokenizer, f.images, r);
      shards.push_back(drain(loader));
    }
    // dealt round-robin: rank r holds the batches whose place in the stream is r mod W, and all shards together,
    // in stream order, are the one-process stream
    std::vector<Batch> pooled;
    for (int64_t rank = 0; rank < world; ++rank)
      for (const Batch& b : shards[size_t(rank)]) {
        CHECK((b.epoch * one.batches_per_epoch() + b.index) % world == rank);
        pooled.push_back(b);
      }
    std::sort(pooled.begin(), pooled.end(),
              [](const Batch& a, const Batch& b) { return std::tie(a.epoch, a.index) < std::tie(b.epoch, b.index); });
    check_same_batches(stream, pooled);

    // resuming rank 1 mid-stream continues its own shard; another rank or world size is refused
    LoaderOptions r1 = o;
    r1.rank = 1, r1.world_size = world;
    DataLoader first(dataset, f.tokenizer, f.images, r1);
    std::vector<Batch> head = drain(first, 2);
    const LoaderState state = LoaderState::from_json(nlohmann::json::parse(first.state().to_json().dump()));
    CHECK(state.rank == 1);
    CHECK(state.world_size == world);
    DataLoader resumed(dataset, f.tokenizer, f.images, r1, state);
    std::vector<Batch> tail = drain(resumed);
    head.insert(head.end(), std::make_move_iterator(tail.begin()), std::make_move_iterator(tail.end()));
    check_same_batches(shards[1], head);
    LoaderOptions r0 = r1;
    r0.rank = 0;
    CHECK_THROWS_WITH(DataLoader(dataset, f.tokenizer, f.images, r0, state), Contains("same number of processes"));
    LoaderOptions alone = o;
    CHECK_THROWS_WITH(DataLoader(dataset, f.tokenizer, f.images, alone, state), Contains("rank 1 of"));
  }
  LoaderOptions bad = o;
  bad.rank = 2, bad.world_size = 2;
  CHECK_THROWS_AS(DataLoader(dataset, f.tokenizer, f.images, bad), ConfigError);
}

TEST_CASE("file weights: every epoch samples round(w x records) of each file, exactly and deterministically",
          "[unit][data][loader]") {
  const std::string dir = mole::test::scratch_dir("loader_weights");
  auto write_file = [&](const std::string& name, const std::string& prefix, int n) {
    std::string text = "[";
    for (int i = 0; i < n; ++i)
      text += (i ? ",\n" : "") + record(prefix + std::to_string(i), "", "What is " + std::to_string(i) + "?", "A number.");
    write_bytes(dir + "/" + name, text + "]");
    return dir + "/" + name;
  };
  const std::string a = write_file("a.json", "a", 10), b = write_file("b.json", "b", 6), c = write_file("c.json", "c", 5);
  auto merged = std::make_shared<LlavaDataset>();
  for (const std::string& f : {a, b, c})
    for (LlavaRecord& r : read_llava_dataset(f).records) merged->records.push_back(r);
  merged->path = "a + b + c";
  LoaderOptions o;
  o.batch_size = 4;
  o.n_workers = 1;
  o.seed = 9;
  o.n_image_tokens = 4;
  o.n_epochs = 3;
  o.file_weights = {{a, 2.0}, {b, 0.5}};  // c: 1 (not named)
  auto tok = std::make_shared<const Tokenizer>(mole::test::tiny_tokenizer());
  auto images = std::make_shared<const ImageProcessor>(small_images());
  DataLoader loader(merged, tok, images, o);
  CHECK(loader.batches_per_epoch() == 7);  // 20 + 3 + 5 = 28 samples
  const std::vector<Batch> batches = drain(loader);
  std::vector<std::set<std::string>> b_drawn(3);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::map<std::string, int> seen;
    for (const Batch& batch : batches)
      if (batch.epoch == epoch)
        for (const std::string& id : batch.ids) ++seen[id];
    int from_a = 0, from_b = 0, from_c = 0;
    for (const auto& [id, n] : seen) {
      CHECK(n == (id[0] == 'a' ? 2 : 1));  // weight 2: every record of a twice
      if (id[0] == 'a') from_a += n;
      if (id[0] == 'b') from_b += n, b_drawn[size_t(epoch)].insert(id);
      if (id[0] == 'c') from_c += n;
    }
    CHECK(from_a == 20);
    CHECK(from_b == 3);  // weight 0.5 of 6
    CHECK(from_c == 5);
  }
  CHECK((b_drawn[0] != b_drawn[1] || b_drawn[1] != b_drawn[2]));  // the half is drawn afresh each epoch
  // the same stream again: deterministic
  DataLoader again(merged, tok, images, o);
  check_same_batches(batches, drain(again));
  // without weights nothing changes from the unweighted order
  LoaderOptions plain = o;
  plain.file_weights.clear();
  LoaderOptions ones = o;
  ones.file_weights = {{a, 1.0}, {b, 1.0}, {c, 1.0}};
  DataLoader p1(merged, tok, images, plain), p2(merged, tok, images, ones);
  const auto x = drain(p1), y = drain(p2);
  REQUIRE(x.size() == y.size());
  for (size_t i = 0; i < x.size(); ++i) CHECK(x[i].ids.size() == y[i].ids.size());
}
