// The synthetic shapes dataset: deterministic to the byte for a seed, and its files load in mole's own readers
// (LLaVA JSON, VQAv2 questions/annotations, LLaVA question jsonl).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "data/llava_data.h"
#include "data/shapes.h"
#include "eval/vqa_data.h"
#include "eval/vqa_eval_files.h"
#include "tests/test_util.h"

using namespace mole;
namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string> read_tree(const std::string& root) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    files[fs::relative(e.path(), root).string()] = s.str();
  }
  return files;
}

ShapesOptions small(const std::string& dir, uint64_t seed) {
  ShapesOptions o;
  o.out_dir = dir;
  o.n_train = 30;
  o.n_eval = 10;
  o.n_text_train = 20;
  o.n_text_eval = 10;
  o.size = 48;
  o.seed = seed;
  return o;
}

}  // namespace

TEST_CASE("make-data shapes: same seed gives byte-identical files, another seed other files", "[unit][data][shapes]") {
  std::string a = mole::test::scratch_dir("shapes_a"), b = mole::test::scratch_dir("shapes_b"),
              c = mole::test::scratch_dir("shapes_c");
  make_shapes_dataset(small(a, 7));
  make_shapes_dataset(small(b, 7));
  make_shapes_dataset(small(c, 8));
  auto ta = read_tree(a), tb = read_tree(b), tc = read_tree(c);
  CHECK(ta.size() == 30 + 10 + 11);  // images, plus 11 data files (mc_questions.jsonl, mc_problems.json among them)
  CHECK(ta == tb);
  CHECK(ta["instruct.json"] != tc["instruct.json"]);
  CHECK(ta["images/train/000000.png"] != tc["images/train/000000.png"]);
}

TEST_CASE("make-data shapes: files load in the LLaVA and VQA readers", "[unit][data][shapes]") {
  std::string dir = mole::test::scratch_dir("shapes_read");
  auto info = make_shapes_dataset(small(dir, 1));
  auto captions = read_llava_dataset(dir + "/captions.json", /*strict=*/true);
  CHECK(captions.records.size() == 30);
  auto instruct = read_llava_dataset(dir + "/instruct.json", /*strict=*/true);
  CHECK(static_cast<int64_t>(instruct.records.size()) == info["instruct_records"].get<int64_t>());
  int64_t with_image = 0, text_only = 0;
  for (const auto& r : instruct.records) {
    (r.images.empty() ? text_only : with_image) += 1;
    for (const auto& img : r.images) CHECK(fs::exists(dir + "/" + img));
  }
  CHECK(text_only == 20);
  CHECK(with_image >= 30);
  for (const char* family : {"vqa_colour", "vqa_count", "describe", "yesno", "mc", "text_arithmetic"})
    CHECK(info["instruct_families"].contains(family));

  auto questions = read_vqav2_questions(dir + "/eval/vqav2_questions.json");
  auto annotations = read_vqav2_annotations(dir + "/eval/vqav2_annotations.json");
  auto llava = read_llava_questions(dir + "/eval/llava_questions.jsonl");
  REQUIRE(questions.size() == 30);  // 3 per eval image: two short answers and a yes/no
  // the fourth, a multiple choice, is scored by its letter (ScienceQA's protocol): its own files
  auto mc = read_llava_questions(dir + "/eval/mc_questions.jsonl");
  auto problems = read_scienceqa_problems(dir + "/eval/mc_problems.json", "test");
  REQUIRE(mc.size() == 10);
  REQUIRE(problems.size() == 10);
  for (const auto& q : mc) {
    const auto& p = problems.at(std::to_string(q.question_id));
    CHECK(p.n_choices == 4);
    CHECK(p.answer >= 0);
    CHECK(p.answer < 4);
    CHECK(q.category == "mc");
    CHECK(fs::exists(dir + "/images/eval/" + q.image));
  }
  CHECK(info["mc_eval_questions"] == 10);
  REQUIRE(llava.size() == questions.size());
  for (size_t i = 0; i < questions.size(); ++i) {
    const auto& ann = annotations.at(questions[i].question_id);
    CHECK(ann.answers.size() == 10);
    CHECK(llava[i].question_id == questions[i].question_id);
    CHECK(fs::exists(dir + "/images/eval/" + llava[i].image));
    CHECK(llava[i].text.rfind(questions[i].text, 0) == 0);  // the question, then the answer-style suffix
  }
  auto text = read_llava_questions(dir + "/eval/text_questions.jsonl");
  auto text_ann = read_vqav2_annotations(dir + "/eval/text_annotations.json");
  CHECK(text.size() == 10);
  for (const auto& q : text) CHECK(text_ann.count(q.question_id) == 1);
}
