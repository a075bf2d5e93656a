// The official VQA metrics (eval/vqa_metrics.h): each edge case of docs/EVAL.md against its expected value,
// the file readers and the score-vqa command; and ([reference]) a few hundred generated answers scored here
// and by tests/reference/vqa_eval_reference.py, a transcription of vqaEval.py and LLaVA's scripts, which
// must agree exactly (same strings, same doubles).
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/json_config.h"
#include "data/llava_data.h"
#include "eval/py_text.h"
#include "eval/vqa_data.h"
#include "eval/vqa_eval_files.h"
#include "eval/vqa_metrics.h"

namespace mole {
int cmd_score_vqa(int argc, char** argv);  // pipelines/cmd_score_vqa.cpp
}

using namespace mole;
using Catch::Contains;
using Approx = Catch::Detail::Approx;

namespace {

// The full VQAv2 normalisation applied to ground-truth answers and predictions.
std::string normalise(const std::string& s) { return vqa_process_digit_article(vqa_process_punctuation(s)); }

std::vector<std::string> repeat(const std::string& s, int n) { return std::vector<std::string>(n, s); }

// m answers "cat" and 10 - m "dog": not all identical (for 0 < m < 10), prediction "cat".
double leave_one_out(int m) {
  std::vector<std::string> gt = repeat("cat", m);
  for (int i = m; i < 10; ++i) gt.push_back("dog");
  return vqa_question_accuracy(gt, "cat");
}

// A fresh folder for this test's files: build/test_scratch/vqa_<tag> as test::scratch_dir makes (not used
// here so that this file builds without LibTorch), the system's temp folder outside the CMake build.
std::string scratch(const std::string& tag) {
#ifdef MOLE_BINARY_DIR
  auto dir = std::filesystem::path(MOLE_BINARY_DIR) / "test_scratch" / ("vqa_" + tag);
#else
  auto dir = std::filesystem::temp_directory_path() / ("mole_vqa_" + tag);
#endif
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

std::string write(const std::string& dir, const std::string& name, const std::string& text) {
  std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

int run_score(std::vector<std::string> args) {
  args.insert(args.begin(), {"mole", "score-vqa"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return cmd_score_vqa(static_cast<int>(argv.size()), argv.data());
}

// Three annotated questions: all-identical "red" (answered "red": 1), mixed "2"/"3" (answered "two": 3 of
// the 10 say "2" -> 0.9), all-identical "yes" (answered "no": 0).
std::map<int64_t, VqaAnnotation> small_annotations() {
  std::map<int64_t, VqaAnnotation> a;
  a[1] = {1, 10, "what color is the", "other", "red", repeat("red", 10)};
  std::vector<std::string> two_three = repeat("2", 3);
  for (int i = 0; i < 7; ++i) two_three.push_back("3");
  a[2] = {2, 10, "how many", "number", "3", two_three};
  a[3] = {3, 11, "is the", "yes/no", "yes", repeat("yes", 10)};
  return a;
}

const char* kAnnotationsJson = R"({"annotations": [
 {"question_id": 3, "image_id": 11, "question_type": "is the", "answer_type": "yes/no", "multiple_choice_answer": "yes",
  "answers": [{"answer": "yes", "answer_id": 1}, {"answer": "yes", "answer_id": 2}, {"answer": "yes", "answer_id": 3}]},
 {"question_id": 1, "image_id": 10, "question_type": "what color is the", "answer_type": "other", "multiple_choice_answer": "red",
  "answers": [{"answer": "red", "answer_id": 1}, {"answer": "red", "answer_id": 2}, {"answer": "red", "answer_id": 3}]},
 {"question_id": 2, "image_id": 10, "question_type": "how many", "answer_type": "number", "multiple_choice_answer": "2",
  "answers": [{"answer": "2", "answer_id": 1}, {"answer": "2", "answer_id": 2}, {"answer": "3", "answer_id": 3}]}]})";

}  // namespace

TEST_CASE("VQA normalisation gives the documented examples", "[unit][vqa]") {
  CHECK(normalise("The dog's toy") == "dog's toy");
  CHECK(normalise("a,b") == "b");
  CHECK(vqa_process_punctuation("a,b") == "a b");  // no space next to ',' and no digit,digit: a space
  CHECK(normalise("100,978") == "100978");        // digit,comma,digit: every mark deleted
  CHECK(normalise("black-and-white") == "black and white");
  CHECK(normalise("Dont") == "don't");
  CHECK(normalise("None") == "0");
  CHECK(normalise("yes, it is") == "yes it is");  // ", " in the input: ',' deleted
  CHECK(normalise("  Two   dogs ") == "2 dogs");
  CHECK(normalise("an apple") == "apple");
  CHECK(normalise("Im") == "im");                  // "Im" -> "I'm" is in the table but lookup follows lower()
  CHECK(normalise("somebody'd") == "somebodyd");   // the table's reversed entry, kept
  CHECK(normalise("twas") == "'twas");
}

TEST_CASE("VQA period rule keeps decimals and stops after 32 periods", "[unit][vqa]") {
  CHECK(vqa_process_punctuation("2.5") == "2.5");
  CHECK(vqa_process_punctuation("3.") == "3");
  CHECK(normalise("U.S.A.") == "usa");
  CHECK(vqa_process_punctuation(".5 and 5.") == ".5 and 5");
  CHECK(vqa_process_punctuation(std::string(32, '.') + "x") == "x");
  CHECK(vqa_process_punctuation(std::string(40, '.') + "x") == std::string(8, '.') + "x");  // re.sub count=32
  // The count covers the whole text: the 33rd removable period stays wherever it is.
  std::string many;
  for (int i = 0; i < 33; ++i) many += "a.";
  CHECK(vqa_process_punctuation(many) == std::string(33, 'a') + ".");
}

TEST_CASE("VQA accuracy normalises only when the answers differ", "[unit][vqa]") {
  CHECK(vqa_question_accuracy(repeat("two", 10), "Two") == 0.0);  // all identical: compared raw
  CHECK(vqa_question_accuracy(repeat("two", 10), "two") == 1.0);
  CHECK(vqa_question_accuracy(repeat("two", 10), " two\n") == 1.0);  // whitespace is always cleaned
  std::vector<std::string> mixed = repeat("two", 9);
  mixed.push_back("2");
  CHECK(vqa_question_accuracy(mixed, "Two") == 1.0);  // mixed: everything normalised to "2"
  CHECK(vqa_question_accuracy(mixed, "2") == 1.0);
  CHECK_THROWS_AS(vqa_question_accuracy({}, "x"), DataError);
}

TEST_CASE("VQA leave-one-out accuracy for 0 to 10 matching answers", "[unit][vqa]") {
  CHECK(leave_one_out(0) == 0.0);
  CHECK(leave_one_out(1) == Approx(0.3));
  CHECK(leave_one_out(2) == Approx(0.6));
  CHECK(leave_one_out(3) == Approx(0.9));
  CHECK(leave_one_out(4) == Approx(1.0));
  CHECK(leave_one_out(9) == Approx(1.0));
  CHECK(vqa_question_accuracy(repeat("cat", 10), "cat") == 1.0);
  CHECK(vqa_question_accuracy({"cat", "dog", "cat"}, "cat") == Approx((1.0 / 3 + 2.0 / 3 + 1.0 / 3) / 3));
}

TEST_CASE("EvalAIAnswerProcessor as LLaVA applies it before submission", "[unit][vqa]") {
  CHECK(eval_ai_answer_processor("a,b") == "ab");               // ',' deleted before anything else
  CHECK(eval_ai_answer_processor("The dog's toy") == "dog 's toy");  // "'s" -> " 's": no longer "dog's"
  CHECK(eval_ai_answer_processor("It's RED!") == "it 's red");
  CHECK(eval_ai_answer_processor("What?") == "what");
  CHECK(eval_ai_answer_processor("Two.") == "2");
  CHECK(eval_ai_answer_processor("100,978") == "100978");
  CHECK(eval_ai_answer_processor("  Black-and-white\n") == "black and white");
  CHECK(eval_ai_answer_processor("Dont") == "don't");
}

TEST_CASE("GQA prediction is rstrip of periods then lower", "[unit][vqa]") {
  CHECK(gqa_prediction("Yes.") == "yes");
  CHECK(gqa_prediction("Left...") == "left");
  CHECK(gqa_prediction("A.B.") == "a.b");
  CHECK(gqa_prediction("  Red.") == "  red");  // no whitespace strip
  CHECK(gqa_prediction("ÉTÉ") == "été");
  auto s = score_gqa({{"1", "yes"}, {"2", "red"}, {"3", "left"}}, {{"1", "yes"}, {"2", "blue"}, {"3", "left"}, {"9", "x"}});
  CHECK(s.correct == 2);
  CHECK(s.count == 3);
  CHECK(s.accuracy == 2.0 / 3.0 * 100);
  CHECK_THROWS_WITH(score_gqa({{"1", "yes"}, {"05", "no"}}, {{"1", "yes"}}), Contains("05"));
}

TEST_CASE("ScienceQA letter extraction", "[unit][vqa]") {
  CHECK(scienceqa_letter("A", 4) == "A");
  CHECK(scienceqa_letter("B. The second one", 4) == "B");
  CHECK(scienceqa_letter("The answer is C.", 4) == "C");
  CHECK(scienceqa_letter("Because ... The answer is C, clearly", 4) == "C");  // '.' in the regex: any char
  CHECK(scienceqa_letter("I do not know", 4) == "FAILED");
  CHECK(scienceqa_letter("The answer is C", 4) == "FAILED");  // the regex needs one more character
  CHECK(scienceqa_letter("The answer is A. The answer is B.", 4) == "FAILED");  // two matches
  CHECK(scienceqa_letter("B.", 4) == "FAILED");  // neither a bare letter nor "B. "
  CHECK(scienceqa_letter(" A", 4) == "FAILED");  // not stripped
  // Out of range: parsed, but no index (get_pred_idx -> -1): never correct.
  CHECK(scienceqa_parse("D") == "D");
  CHECK(scienceqa_letter("D", 3) == "FAILED");
  CHECK(scienceqa_parse("The answer is F.") == "F");
  CHECK(scienceqa_letter("The answer is F.", 6) == "FAILED");  // options stop at E
  CHECK(scienceqa_parse("F") == "FAILED");

  std::map<std::string, ScienceQaProblem> problems = {{"1", {0, 2}}, {"2", {2, 3}}, {"3", {1, 2}}, {"4", {0, 4}}};
  std::map<std::string, ScienceQaPrediction> preds = {{"1", {"A", "<image>\nQ"}}, {"2", {"The answer is C.", "Q"}},
                                                      {"3", {"C", "<image>\nQ"}}, {"99", {"A", ""}}};
  auto s = score_scienceqa(problems, preds);  // 4: no prediction -> FAILED
  CHECK(s.correct == 2);
  CHECK(s.count == 4);
  CHECK(s.accuracy == 50.0);
  CHECK(s.img_count == 2);
  CHECK(s.img_accuracy == 50.0);
  CHECK(s.pred_index == std::map<std::string, int>{{"1", 0}, {"2", 2}, {"3", -1}, {"4", -1}});
}

TEST_CASE("POPE parsing reads the first sentence", "[unit][vqa]") {
  CHECK(pope_parse("No, there is not.") == "no");
  CHECK(pope_parse("Yes.") == "yes");
  CHECK(pope_parse("There is no dog") == "no");
  CHECK(pope_parse("Yes. There is no dog.") == "yes");  // text after the first '.' ignored
  CHECK(pope_parse("Not really") == "yes");             // "Not" is not one of No / not / no
  CHECK(pope_parse("no,") == "no");
  CHECK(pope_parse("No\nthere is a dog") == "yes");  // split(' ') keeps "No\nthere" whole
  CHECK(pope_parse("") == "yes");
}

TEST_CASE("POPE metrics on a hand-computed set", "[unit][vqa]") {
  // pairs: (yes,yes) TP, (yes,no) FP, (no,no) TN, (no,yes) FN, (yes,yes) TP
  auto s = score_pope({"yes", "yes", "no", "no", "yes"}, {"yes", "no", "no", "yes", "yes"});
  CHECK(s.tp == 2);
  CHECK(s.fp == 1);
  CHECK(s.tn == 1);
  CHECK(s.fn == 1);
  CHECK(s.n == 5);
  CHECK(s.accuracy == Approx(0.6));
  CHECK(s.precision == Approx(2.0 / 3));
  CHECK(s.recall == Approx(2.0 / 3));
  CHECK(s.f1 == Approx(2.0 / 3));
  CHECK(s.yes_ratio == Approx(0.6));
  auto none = score_pope({"no", "no"}, {"yes", "no"});  // Python divides by zero here; 0 instead
  CHECK(none.precision == 0.0);
  CHECK(none.f1 == 0.0);
  CHECK(none.accuracy == 0.5);
  CHECK_THROWS_AS(score_pope({"yes"}, {"yes", "no"}), DataError);
}

TEST_CASE("py_round rounds like Python", "[unit][vqa]") {
  CHECK(py_round(2.675, 2) == 2.67);  // 2.675 is 2.67499999... in binary
  CHECK(py_round(0.125, 2) == 0.12);  // an exact tie: to even
  CHECK(py_round(0.375, 2) == 0.38);
  CHECK(py_round(100.0 * 1.9 / 3, 2) == 63.33);
}

TEST_CASE("Python str semantics on non-ASCII text", "[unit][vqa]") {
  CHECK(py_lower("ÉCOLE Ünd ΑΒΓ Ж") == "école ünd αβγ ж");
  CHECK(py_lower("İ") == "i\xcc\x87");
  CHECK(py_lower("ΟΔΟΣ ΣΑ Σ") == "οδος σα σ");  // final sigma only where a word ends
  CHECK(py_split("a\xc2\xa0" "b\xe3\x80\x80" "c") == std::vector<std::string>{"a", "b", "c"});  // NBSP, ideographic
  CHECK(py_strip("\xc2\xa0 x \x1f") == "x");
  CHECK(vqa_process_punctuation("\xd9\xa1,\xd9\xa2-x") == "\xd9\xa1\xd9\xa2x");  // Arabic-Indic digit,comma,digit
  CHECK(vqa_process_punctuation("\xef\xbc\x93.\xef\xbc\x95") == "\xef\xbc\x93.\xef\xbc\x95");  // fullwidth 3.5
}

TEST_CASE("VQAv2 scorer aggregates per question and answer type with the official keys", "[unit][vqa]") {
  auto ann = small_annotations();
  auto score = score_vqav2(ann, {{1, "red"}, {2, "two"}, {3, "no"}});
  CHECK(score.per_question.at(1) == 1.0);
  CHECK(score.per_question.at(2) == Approx(0.9));
  CHECK(score.per_question.at(3) == 0.0);
  CHECK(score.overall == Approx(100 * 1.9 / 3));
  json j = score.to_json();
  CHECK(j["overall"] == 63.33);
  CHECK(j["perAnswerType"] == json{{"other", 100.0}, {"number", 90.0}, {"yes/no", 0.0}});
  CHECK(j["perQuestionType"] == json{{"what color is the", 100.0}, {"how many", 90.0}, {"is the", 0.0}});
  CHECK(j["evalQA"] == json{{"1", 100.0}, {"2", 90.0}, {"3", 0.0}});
  CHECK(j.size() == 4);
  // The file order only changes the summation order; here the result is the same.
  CHECK(score_vqav2(ann, {{1, "red"}, {2, "two"}, {3, "no"}}, {3, 1, 2}).to_json() == j);
  CHECK_THROWS_AS(score_vqav2(ann, {{1, "red"}, {2, "two"}, {3, "no"}}, {3, 1}), DataError);
}

TEST_CASE("VQAv2 results must answer exactly the annotated questions", "[unit][vqa]") {
  auto ann = small_annotations();
  CHECK_THROWS_WITH(score_vqav2(ann, {{1, "red"}, {2, "two"}}), Contains("1 annotated question(s) have no answer (3)"));
  CHECK_THROWS_WITH(score_vqav2(ann, {{1, "red"}, {2, "two"}, {3, "no"}, {77, "x"}}),
                    Contains("1 answer(s) are for questions not annotated (77)"));
  CHECK_THROWS_AS(score_vqav2({}, {}), DataError);
}

TEST_CASE("VQA result readers name the file and line", "[unit][vqa]") {
  std::string dir = scratch("readers");
  auto answers = read_llava_answers(write(dir, "a.jsonl",
                                          "{\"question_id\": 2, \"text\": \"Two.\", \"prompt\": \"<image>\\nQ\"}\n\n"
                                          "{\"question_id\": \"05\", \"text\": \"Left.\"}\n"));
  REQUIRE(answers.size() == 2);
  CHECK(answers[0].question_id == "2");
  CHECK(answers[0].id_is_integer);
  CHECK(answers[0].prompt == "<image>\nQ");
  CHECK(answers[1].question_id == "05");
  CHECK(answers[1].line == 3);
  CHECK(llava_answers_for_gqa(answers) == std::map<std::string, std::string>{{"2", "two"}, {"05", "left"}});
  CHECK_THROWS_WITH(llava_answers_for_vqav2(answers, "a.jsonl"), Contains("a.jsonl: line 3"));

  std::string bad = write(dir, "bad.jsonl", "{\"question_id\": 1, \"text\": \"x\"}\n{\"question_id\": 2}\n");
  CHECK_THROWS_WITH(read_llava_answers(bad), Contains("bad.jsonl: line 2") && Contains("text"));
  CHECK_THROWS_WITH(read_llava_answers(write(dir, "broken.jsonl", "{oops\n")), Contains("line 1: not valid JSON"));

  auto vqa = read_llava_answers(write(dir, "v.jsonl", "{\"question_id\": 1, \"text\": \"The dog's toy\"}\n"
                                                     "{\"question_id\": 5, \"text\": \"x\"}\n"));
  CHECK(llava_answers_for_vqav2(vqa, "v.jsonl") == std::map<int64_t, std::string>{{1, "dog 's toy"}, {5, "x"}});
  std::vector<int64_t> split = {1, 2};  // 2 unanswered -> "", 5 outside the split -> dropped
  CHECK(llava_answers_for_vqav2(vqa, "v.jsonl", &split) == std::map<int64_t, std::string>{{1, "dog 's toy"}, {2, ""}});

  // Question files of three shapes: VQAv2 questions JSON, a JSON list of LLaVA records, LLaVA jsonl.
  using Ids = std::vector<std::string>;
  CHECK(read_question_ids(write(dir, "q.json", R"({"questions": [{"question_id": 7}, {"question_id": 3}]})")) == Ids{"7", "3"});
  CHECK(read_question_ids(write(dir, "sqa.json", R"([{"id": "12", "conversations": []}, {"id": "4"}])")) == Ids{"12", "4"});
  CHECK(read_question_ids(write(dir, "q.jsonl", "{\"question_id\": 5}\n{\"question_id\": \"x\"}\n")) == Ids{"5", "x"});
  CHECK_THROWS_WITH(read_question_ids(write(dir, "q2.jsonl", "{\"question_id\": 5}\n{\"id\": 1}\n")),
                    Contains("q2.jsonl: line 2"));

  std::string results = write(dir, "r.json", R"([{"question_id": 1, "answer": "Red"}, {"question_id": 1, "answer": "blue"}])");
  CHECK(read_vqav2_results(results) == std::map<int64_t, std::string>{{1, "blue"}});  // the last one wins
  CHECK_THROWS_WITH(read_vqav2_results(write(dir, "r2.json", R"([{"question_id": 1}])")),
                    Contains("r2.json: entry 0") && Contains("answer"));
  CHECK_THROWS_WITH(read_vqav2_results(write(dir, "r3.json", R"({"question_id": 1})")), Contains("r3.json"));
}

TEST_CASE("score-vqa scores VQAv2 files and writes the official keys", "[unit][vqa]") {
  std::string dir = scratch("cmd");
  std::string ann = write(dir, "ann.json", kAnnotationsJson);
  std::string res = write(dir, "res.json", R"([{"question_id": 1, "answer": "red"}, {"question_id": 2, "answer": "two"},
                                              {"question_id": 3, "answer": "yes"}])");
  REQUIRE(run_score({"--results", res, "--annotations", ann, "--out", dir + "/score.json"}) == 0);
  json j = read_json_file(dir + "/score.json");
  // Three answers each. q1, q3: all identical and matched: 2 of the other 2 match -> 2/3 each.
  // q2: "2", "2", "3" mixed, "two" -> "2": (1/3 + 1/3 + 2/3) / 3 = 4/9.
  CHECK(j["evalQA"] == json{{"1", 66.67}, {"2", 44.44}, {"3", 66.67}});
  CHECK(j["overall"] == 59.26);  // 100 * (2/3 + 2/3 + 4/9) / 3
  CHECK(j["perAnswerType"] == json{{"other", 66.67}, {"number", 44.44}, {"yes/no", 66.67}});

  // LLaVA answers: EvalAIAnswerProcessor first; --questions fills unanswered questions with "".
  std::string llava = write(dir, "answers.jsonl", "{\"question_id\": 1, \"text\": \"Red.\"}\n"
                                                  "{\"question_id\": 3, \"text\": \"Yes\"}\n");
  std::string questions = write(dir, "q.jsonl", "{\"question_id\": 1, \"text\": \"?\"}\n{\"question_id\": 2, \"text\": \"?\"}\n"
                                                "{\"question_id\": 3, \"text\": \"?\"}\n");
  REQUIRE(run_score({"--results", llava, "--annotations", ann, "--questions", questions, "--out", dir + "/s2.json"}) == 0);
  json j2 = read_json_file(dir + "/s2.json");
  CHECK(j2["evalQA"] == json{{"1", 66.67}, {"2", 0.0}, {"3", 66.67}});
  // Without --questions the missing question is an error naming it.
  CHECK_THROWS_WITH(run_score({"--results", llava, "--annotations", ann}), Contains("have no answer (2)"));
  CHECK_THROWS_AS(run_score({"--results", llava}), std::exception);  // --annotations is required
}

TEST_CASE("score-vqa tells GQA ScienceQA and POPE files apart", "[unit][vqa]") {
  std::string dir = scratch("cmd_formats");
  std::string gqa = write(dir, "testdev_balanced_questions.json",
                          R"({"201": {"answer": "yes", "isBalanced": true}, "202": {"answer": "left", "isBalanced": true},
                              "203": {"answer": "red", "isBalanced": false}})");
  std::string gqa_answers = write(dir, "gqa.jsonl", "{\"question_id\": \"201\", \"text\": \"Yes.\"}\n"
                                                    "{\"question_id\": \"202\", \"text\": \"Right\"}\n");
  REQUIRE(run_score({"--results", gqa_answers, "--annotations", gqa, "--out", dir + "/gqa.json"}) == 0);
  CHECK(read_json_file(dir + "/gqa.json")["accuracy"] == 50.0);

  std::string sqa = write(dir, "problems.json",
                          R"({"1": {"choices": ["a", "b"], "answer": 1, "split": "test"},
                              "2": {"choices": ["a", "b", "c"], "answer": 0, "split": "test"},
                              "3": {"choices": ["a", "b"], "answer": 0, "split": "train"}})");
  std::string sqa_answers = write(dir, "sqa.jsonl", "{\"question_id\": \"1\", \"text\": \"B\", \"prompt\": \"<image>\"}\n"
                                                    "{\"question_id\": \"2\", \"text\": \"The answer is B.\"}\n");
  REQUIRE(run_score({"--results", sqa_answers, "--annotations", sqa, "--out", dir + "/sqa.json"}) == 0);
  json s = read_json_file(dir + "/sqa.json");
  CHECK(s["acc"] == 50.0);
  CHECK(s["count"] == 2);

  std::filesystem::create_directories(dir + "/pope");
  write(dir + "/pope", "coco_pope_random.json", "{\"question_id\": 1, \"label\": \"yes\"}\n{\"question_id\": 2, \"label\": \"no\"}\n");
  write(dir + "/pope", "coco_pope_adversarial.json", "{\"question_id\": 1, \"label\": \"no\"}\n");
  std::string pope_q = write(dir, "pope_q.jsonl", "{\"question_id\": 1, \"category\": \"random\"}\n"
                                                  "{\"question_id\": 2, \"category\": \"random\"}\n"
                                                  "{\"question_id\": 3, \"category\": \"adversarial\"}\n");
  std::string pope_a = write(dir, "pope_a.jsonl", "{\"question_id\": 1, \"text\": \"Yes, there is.\"}\n"
                                                  "{\"question_id\": 3, \"text\": \"No.\"}\n"
                                                  "{\"question_id\": 2, \"text\": \"Yes.\"}\n");
  REQUIRE(run_score({"--results", pope_a, "--annotations", dir + "/pope", "--questions", pope_q, "--out",
                     dir + "/pope.json"}) == 0);
  json p = read_json_file(dir + "/pope.json");
  CHECK(p["categories"]["random"]["accuracy"] == 0.5);  // yes/yes, yes/no
  CHECK(p["categories"]["adversarial"]["accuracy"] == 1.0);
  CHECK_THROWS_WITH(run_score({"--results", pope_a, "--annotations", dir + "/pope"}), Contains("--questions"));

  CHECK_THROWS_WITH(run_score({"--results", pope_a, "--annotations", write(dir, "odd.json", "[1, 2]")}),
                    Contains("--format"));
}

// ---- [reference]: generated answers against the Python transcription of the official code ----

namespace {

struct Lcg {
  uint64_t state;
  uint32_t next(uint32_t n) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33) % n;
  }
};

// Pieces that hit every rule: number words, articles, contractions, marks next to spaces or not, periods
// before digits or not, digit-comma-digit, whitespace kinds, non-ASCII letters, digits and spaces, and the
// ScienceQA / POPE phrasings.
const std::vector<std::string> kPieces = {
    "two", "Two", "none", "ten", "the", "A", "an", "dog's", "dont", "Dont", "somebody'd", "yall", "Im", "twas",
    "yes", "No", "no", "not", "red", "black-and-white", "2.5", "3.", "U.S.A.", "100,978", "a,b", ",", ".", "..",
    "?", "!", "(", ")", "\"", "/", "\\", "_", "-", "@", "`", "'s", "'", ";", "=", "+", "<", ">", "[", "]", "{", "}",
    "\n", "\t", " ", "  ", "É", "İ", "café", "Σ", "\xc2\xa0", "\xe3\x80\x80", "\xd9\xa1", "\xef\xbc\x95", "7",
    "The answer is C.", "The answer is ", "B. ", "E", "Z", "There is", "1,", ",2", "...................."};

std::string random_text(Lcg& rng) {
  std::string s;
  int n = 1 + rng.next(6);
  for (int i = 0; i < n; ++i) {
    s += kPieces[rng.next(kPieces.size())];
    uint32_t sep = rng.next(4);
    if (sep == 0) s += " ";
    if (sep == 1) s += ",";
  }
  return s;
}

}  // namespace

TEST_CASE("VQA metrics agree with the Python transcription of the official code", "[reference][vqa]") {
  Lcg rng{12345};
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) texts.push_back(random_text(rng));
  for (int n = 30; n <= 36; ++n) texts.push_back(std::string(n, '.') + "a." + "b.");
  // Questions: ten answers drawn from a few variants of one text, so that matches and ties are common.
  json questions = json::array();
  std::vector<std::pair<std::vector<std::string>, std::string>> qs;
  for (int i = 0; i < 300; ++i) {
    std::vector<std::string> variants;
    std::string base = random_text(rng);
    variants.push_back(base);
    variants.push_back(eval_ai_answer_processor(base));
    variants.push_back(normalise(base));
    variants.push_back(random_text(rng));
    int n_distinct = 1 + rng.next(4);
    std::vector<std::string> gt;
    for (int k = 0; k < 10; ++k) gt.push_back(variants[rng.next(n_distinct)]);
    std::string pred = rng.next(3) == 0 ? random_text(rng) : variants[rng.next(variants.size())];
    if (rng.next(4) == 0) pred = " " + pred + "\n";
    qs.push_back({gt, pred});
    questions.push_back({{"gt", gt}, {"pred", pred}});
  }
  // A whole VQAv2 evaluation over those questions, annotated in a shuffled order with a few types.
  std::map<int64_t, VqaAnnotation> annotations;
  std::map<int64_t, std::string> answers;
  std::vector<int64_t> order;
  json ann_list = json::array(), res_list = json::array();
  const char* q_types[] = {"what", "how many", "is the", "what color is the"};
  const char* a_types[] = {"other", "number", "yes/no"};
  for (size_t i = 0; i < qs.size(); ++i) {
    int64_t id = 1000 + static_cast<int64_t>((i * 7919) % qs.size());
    VqaAnnotation a{id, 0, q_types[rng.next(4)], a_types[rng.next(3)], "", qs[i].first};
    annotations[id] = a;
    answers[id] = qs[i].second;
    order.push_back(id);
    ann_list.push_back({{"question_id", id}, {"question_type", a.question_type}, {"answer_type", a.answer_type},
                        {"answers", a.answers}});
    res_list.push_back({{"question_id", id}, {"answer", qs[i].second}});
  }
  std::vector<std::string> pope_preds, pope_labels;
  for (const auto& t : texts) {
    pope_preds.push_back(pope_parse(t));
    pope_labels.push_back(rng.next(2) ? "yes" : "no");
  }
  json cases = {{"texts", texts}, {"questions", questions},
                {"vqav2", {{"annotations", ann_list}, {"results", res_list}}},
                {"pope", {{"predictions", pope_preds}, {"labels", pope_labels}}}};

  std::string dir = scratch("reference");
  write_json_file(dir + "/cases.json", cases);
  std::string command = std::string(MOLE_PYTHON) + " " + MOLE_SOURCE_DIR +
                        "/tests/reference/vqa_eval_reference.py --cases " + dir + "/cases.json --out " + dir +
                        "/out.json > " + dir + "/log.txt 2>&1";
  int rc = std::system(command.c_str());
  std::ifstream log(dir + "/log.txt");
  INFO(std::string(std::istreambuf_iterator<char>(log), {}));
  REQUIRE(rc == 0);
  json ref = read_json_file(dir + "/out.json");

  int text_mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const json& r = ref["texts"][i];
    INFO("text " << i << ": [" << texts[i] << "]");
    bool same = r["punct"] == vqa_process_punctuation(texts[i]) &&
                r["digit_article"] == vqa_process_digit_article(texts[i]) &&
                r["eval_ai"] == eval_ai_answer_processor(texts[i]) && r["gqa"] == gqa_prediction(texts[i]) &&
                r["scienceqa"] == scienceqa_parse(texts[i]) && r["pope"] == pope_parse(texts[i]);
    CHECK(same);
    text_mismatches += !same;
  }
  int accuracy_mismatches = 0;
  for (size_t i = 0; i < qs.size(); ++i) {
    double ours = vqa_question_accuracy(qs[i].first, qs[i].second);
    INFO("question " << i << ": pred [" << qs[i].second << "]");
    CHECK(ref["questions"][i]["accuracy"].get<double>() == ours);  // bit for bit
    accuracy_mismatches += ref["questions"][i]["accuracy"].get<double>() != ours;
  }
  json ours = score_vqav2(annotations, answers, order).to_json();
  CHECK(ref["vqav2"] == ours);
  PopeScore pope = score_pope(pope_preds, pope_labels);
  CHECK(ref["pope"] == json{{"accuracy", pope.accuracy}, {"precision", pope.precision}, {"recall", pope.recall},
                            {"f1", pope.f1}, {"yes_ratio", pope.yes_ratio}, {"tp", pope.tp}, {"fp", pope.fp},
                            {"tn", pope.tn}, {"fn", pope.fn}});
  WARN("compared " << texts.size() << " texts x 6 functions, " << qs.size() << " question accuracies, "
                   << annotations.size() << "-question VQAv2 score: " << text_mismatches << " + "
                   << accuracy_mismatches << " mismatches");
}

TEST_CASE("image names come from the pattern without printf, and a bad pattern is a clear error") {
  CHECK(image_name_from_pattern("COCO_val2014_%012lld.jpg", 42) == "COCO_val2014_000000000042.jpg");
  CHECK(image_name_from_pattern("%d.png", 7) == "7.png");
  CHECK(image_name_from_pattern("img_%5d.jpg", 42) == "img_   42.jpg");
  CHECK(image_name_from_pattern("%03i_%%.jpg", -4) == "-04_%.jpg");
  CHECK(image_name_from_pattern("%lu", 12) == "12");
  CHECK(image_name_from_pattern("%lld", INT64_MIN) == "-9223372036854775808");
  // printf would read arguments that are not there (the crash of `--image-pattern '%s%s%s%s'`)
  for (const std::string bad : {"%s%s%s%s", "%s.jpg", "%d_%d.jpg", "plain.jpg", "%", "%012", "%lllld", "%-5d",
                                "%99999999999d", "%x", "%n"}) {
    INFO(bad);
    CHECK_THROWS_WITH(image_name_from_pattern(bad, 1), Catch::Matchers::Contains("image pattern '" + bad + "'"));
  }
  CHECK_THROWS_WITH(image_name_from_pattern("%u", -1), Catch::Matchers::Contains("negative image id"));
}
