// Which task family each training record belongs to (data/families.h): every source, auto's order of
// preference, and the cap on the number of families.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "data/families.h"

using namespace mole;

namespace {

LlavaRecord rec(const std::string& file, const std::string& image, const std::string& category = "") {
  LlavaRecord r;
  r.file = file;
  if (!image.empty()) r.images = {image};
  r.category = category;
  return r;
}

std::vector<std::string> names_of(const RecordFamilies& f) {
  std::vector<std::string> out;
  for (int64_t i : f.of) out.push_back(f.names[size_t(i)]);
  return out;
}

}  // namespace

TEST_CASE("record families: category, file, image folder, none, and what auto picks", "[unit][data]") {
  const std::vector<LlavaRecord> llava665k = {rec("/d/mix665k.json", "coco/train2017/1.jpg"),
                                              rec("/d/mix665k.json", "gqa/images/2.jpg"),
                                              rec("/d/mix665k.json", ""),  // ShareGPT text
                                              rec("/d/mix665k.json", "coco/train2017/3.jpg")};
  RecordFamilies f = assign_families(llava665k, FamilySource::kAuto);
  CHECK(f.source == FamilySource::kImageFolder);  // one file, no categories: the images' top folders
  CHECK(f.names == std::vector<std::string>{"coco", "gqa", "text"});
  CHECK(names_of(f) == std::vector<std::string>{"coco", "gqa", "text", "coco"});

  const std::vector<LlavaRecord> two_files = {rec("/a/vqa.json", "x.png"), rec("/b/captions.jsonl", "y.png"),
                                              rec("/c/vqa.json", "z.png")};
  f = assign_families(two_files, FamilySource::kAuto);
  CHECK(f.source == FamilySource::kFile);  // stems, the path where two files share one
  CHECK(names_of(f) == std::vector<std::string>{"/a/vqa.json", "captions", "/c/vqa.json"});

  std::vector<LlavaRecord> categorised = two_files;
  categorised[0].category = "yesno";
  f = assign_families(categorised, FamilySource::kAuto);
  CHECK(f.source == FamilySource::kCategory);
  CHECK(names_of(f) == std::vector<std::string>{"yesno", "uncategorised", "uncategorised"});

  CHECK(assign_families({rec("/a.json", "x.png"), rec("/a.json", "y.png")}, FamilySource::kAuto).names.empty());
  CHECK(assign_families(llava665k, FamilySource::kNone).names.empty());
  CHECK(assign_families(llava665k, FamilySource::kCategory).names == std::vector<std::string>{"uncategorised"});
  CHECK(names_of(assign_families({rec("/a.json", "top.png")}, FamilySource::kImageFolder)) ==
        std::vector<std::string>{"."});
  CHECK(parse_enum<FamilySource>("image_folder") == FamilySource::kImageFolder);
  CHECK_THROWS_WITH(parse_enum<FamilySource>("folder"), Catch::Contains("image_folder"));
}

TEST_CASE("record families: beyond the cap the most frequent keep their names and the rest are 'other'",
          "[unit][data]") {
  std::vector<LlavaRecord> records;
  for (int64_t c = 0; c < 40; ++c)  // category c has 40 - c records (c00 the largest)
    for (int64_t k = 0; k < 40 - c; ++k) records.push_back(rec("/a.json", "", "c" + std::string(c < 10 ? "0" : "") + std::to_string(c)));
  const RecordFamilies f = assign_families(records, FamilySource::kCategory);
  REQUIRE(int64_t(f.names.size()) == kMaxFamilies);
  CHECK(f.names.front() == "c00");
  CHECK(std::find(f.names.begin(), f.names.end(), "c30") != f.names.end());
  CHECK(std::find(f.names.begin(), f.names.end(), "c31") == f.names.end());
  CHECK(f.names.back() == "other");
  CHECK(names_of(f).back() == "other");  // c39's one record
}
