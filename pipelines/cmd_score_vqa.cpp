// mole score-vqa --results R --annotations A [--questions Q] [--format vqav2|gqa|scienceqa|pope] [--out FILE]
// Scores model answers with the official metrics (eval/vqa_metrics.h), reading the files the official scripts
// read (eval/vqa_eval_files.h):
//   vqav2      A: VQAv2 annotations JSON. R: a VQAv2 results list [{"question_id", "answer"}] (answers used as
//              given, as by the official evaluator) or LLaVA answers jsonl (each text through
//              EvalAIAnswerProcessor, as convert_vqav2_for_submission.py does; with --questions, questions
//              of that file left unanswered get "" and answers to others are dropped, as there). The results
//              must then cover exactly the annotated questions. --out: {"overall", "perQuestionType",
//              "perAnswerType", "evalQA"}, rounded as vqaEval.py rounds.
//   gqa        A: GQA questions JSON (testdev_balanced_questions.json). R: LLaVA answers jsonl (rstrip('.')
//              .lower(), as convert_gqa_for_eval.py) or converted predictions [{"questionId", "prediction"}].
//   scienceqa  A: ScienceQA problems.json (problems of --split; with --questions, only that file's ids).
//              R: LLaVA answers jsonl.
//   pope       A: the folder of coco_pope_<category>.json label files (or one of them). R: LLaVA answers
//              jsonl. --questions: the LLaVA question jsonl with each question's "category" (required).
// Without --format the format is told from A's shape: a folder or a jsonl with "label" -> pope; an object
// with an "annotations" list -> vqav2; an object of objects with "choices" and an integer "answer" ->
// scienceqa; with "answer" and "isBalanced" -> gqa; anything else asks for --format.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/json_config.h"
#include "data/llava_data.h"
#include "eval/vqa_data.h"
#include "eval/vqa_eval_files.h"
#include "eval/vqa_metrics.h"
#include "pipelines/args.h"

namespace mole {

namespace {

// Whether the file's first non-space character is '[': a JSON list, even if a broken one (so that its error
// is reported as such, not as a bad first line of JSON Lines).
bool starts_as_list(const std::string& path) {
  std::ifstream in(path);
  char c = 0;
  while (in.get(c) && std::isspace(static_cast<unsigned char>(c))) {
  }
  return in && c == '[';
}

// The whole file as one JSON document; a null json when it is not one (e.g. JSON Lines), with the parser's
// message in *error.
json try_parse(const std::string& path, std::string* error = nullptr) {
  std::string text;
  try {
    text = read_input_file(path, "results or annotation file");
  } catch (const std::runtime_error& e) {
    throw DataError(e.what());
  }
  try {
    return parse_json_text(text);
  } catch (const json::exception& e) {
    if (error) *error = e.what();
    return json();
  }
}

std::string detect_format(const std::string& path, const json& doc, const std::string& parse_error) {
  if (std::filesystem::is_directory(path)) return "pope";
  if (doc.is_object() && doc.contains("annotations") && doc["annotations"].is_array()) return "vqav2";
  if (doc.is_object() && doc.contains("label")) return "pope";  // a one-line label file
  if (doc.is_object() && !doc.empty() && doc.begin()->is_object()) {
    const json& first = *doc.begin();
    if (first.contains("choices") && first.contains("answer") && first["answer"].is_number_integer())
      return "scienceqa";
    if (first.contains("answer") && first.contains("isBalanced")) return "gqa";
  }
  if (doc.is_null()) {  // JSON Lines: a POPE label file has "label" on each line
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line) && line.find_first_not_of(" \t\r\n") == std::string::npos) {
    }
    try {
      json first = parse_json_text(line);
      if (first.is_object() && first.contains("label")) return "pope";
    } catch (const json::exception&) {
    }
    throw DataError(path + ": neither a JSON document (" + parse_error + ") nor a POPE label file");
  }
  throw UsageError("mole score-vqa: cannot tell the format of " + path +
                   " from its shape; give --format vqav2|gqa|scienceqa|pope");
}

void print_table(const char* title, const std::map<std::string, double>& values,
                 const std::map<std::string, int64_t>& counts) {
  std::printf("%s:\n", title);
  for (const auto& [name, value] : values) {
    auto n = counts.find(name);
    std::printf("  %-28s %6.2f   (%lld)\n", ("'" + name + "'").c_str(), py_round(value, 2),
                static_cast<long long>(n == counts.end() ? 0 : n->second));
  }
}

json score_vqav2_files(const Args& args, json annotation_doc) {
  const std::string results = args.get("results"), annotations_path = args.get("annotations");
  std::vector<int64_t> order = vqav2_annotation_order(annotation_doc, annotations_path);
  annotation_doc = json();  // the annotations can be large: free the first parse before the second
  auto annotations = read_vqav2_annotations(annotations_path);

  std::map<int64_t, std::string> answers;
  if (starts_as_list(results)) {
    if (args.has("questions"))
      std::fprintf(stderr, "mole score-vqa: note: --questions is not used with a VQAv2 results list\n");
    answers = read_vqav2_results(results);
  } else {
    std::vector<int64_t> split;
    if (args.has("questions"))
      for (const auto& id : read_question_ids(args.get("questions"))) {
        try {
          size_t used = 0;
          split.push_back(std::stoll(id, &used));
          if (used != id.size()) throw std::invalid_argument(id);
        } catch (const std::exception&) {
          throw DataError(args.get("questions") + ": question_id '" + id + "' is not an integer");
        }
      }
    answers = llava_answers_for_vqav2(read_llava_answers(results), results, args.has("questions") ? &split : nullptr);
  }
  VqaScore score = score_vqav2(annotations, answers, order);

  std::map<std::string, int64_t> n_question_type, n_answer_type;
  for (const auto& [id, ann] : annotations) {
    n_question_type[ann.question_type] += 1;
    n_answer_type[ann.answer_type] += 1;
  }
  std::printf("VQAv2: %zu questions\noverall accuracy: %.2f\n", annotations.size(), py_round(score.overall, 2));
  print_table("per answer type", score.per_answer_type, n_answer_type);
  print_table("per question type", score.per_question_type, n_question_type);
  return score.to_json();
}

json score_gqa_files(const Args& args) {
  const std::string results = args.get("results");
  auto gold = read_gqa_gold(args.get("annotations"));
  std::map<std::string, std::string> predictions;
  if (starts_as_list(results)) {  // convert_gqa_for_eval.py's output: used as given
    json results_doc = read_json_file(results);
    for (size_t i = 0; i < results_doc.size(); ++i) {
      const json& e = results_doc[i];
      std::string where = results + ": entry " + std::to_string(i);
      if (!e.is_object() || !e.contains("questionId") || !e.contains("prediction") || !e["prediction"].is_string())
        throw DataError(where + ": expected {\"questionId\", \"prediction\": str}");
      std::string id = e["questionId"].is_string() ? e["questionId"].get<std::string>() : e["questionId"].dump();
      predictions[id] = e["prediction"].get<std::string>();
    }
  } else {
    predictions = llava_answers_for_gqa(read_llava_answers(results));
  }
  AccuracyScore score = score_gqa(gold, predictions);
  std::printf("GQA: %lld balanced questions\naccuracy: %.2f  (%lld correct)\n", static_cast<long long>(score.count),
              score.accuracy, static_cast<long long>(score.correct));
  return score.to_json();
}

json score_scienceqa_files(const Args& args) {
  std::vector<std::string> only;
  if (args.has("questions")) only = read_question_ids(args.get("questions"));
  auto problems = read_scienceqa_problems(args.get("annotations"), args.get("split"), only);
  auto predictions = llava_answers_for_scienceqa(read_llava_answers(args.get("results")));
  ScienceQaScore score = score_scienceqa(problems, predictions);
  std::printf("ScienceQA (%s): %lld problems\naccuracy: %.2f  (%lld correct)\n", args.get("split").c_str(),
              static_cast<long long>(score.count), score.accuracy, static_cast<long long>(score.correct));
  if (score.img_count > 0)
    std::printf("IMG accuracy: %.2f  (%lld of %lld)\n", score.img_accuracy,
                static_cast<long long>(score.img_correct), static_cast<long long>(score.img_count));
  return score.to_json();
}

json score_pope_files_cmd(const Args& args) {
  if (!args.has("questions"))
    throw UsageError("mole score-vqa: POPE needs --questions (the question jsonl with each question's category)");
  auto scores = score_pope_files(read_llava_answers(args.get("results")), args.get("questions"),
                                 args.get("annotations"));
  json categories = json::object(), mean = json::object();
  std::printf("POPE        %8s %9s %8s %8s %9s %6s\n", "accuracy", "precision", "recall", "f1", "yes ratio", "n");
  PopeScore sum;
  for (const auto& [cat, s] : scores) {
    std::printf("%-11s %8.4f %9.4f %8.4f %8.4f %9.4f %6lld\n", cat.c_str(), s.accuracy, s.precision, s.recall, s.f1,
                s.yes_ratio, static_cast<long long>(s.n));
    categories[cat] = s.to_json();
    sum.accuracy += s.accuracy, sum.precision += s.precision, sum.recall += s.recall;
    sum.f1 += s.f1, sum.yes_ratio += s.yes_ratio;
  }
  // The mean over categories (papers report POPE as the average of its three splits).
  double k = static_cast<double>(scores.size());
  mean = {{"accuracy", sum.accuracy / k}, {"precision", sum.precision / k}, {"recall", sum.recall / k},
          {"f1", sum.f1 / k}, {"yes_ratio", sum.yes_ratio / k}};
  std::printf("%-11s %8.4f %9.4f %8.4f %8.4f %9.4f\n", "mean", sum.accuracy / k, sum.precision / k, sum.recall / k,
              sum.f1 / k, sum.yes_ratio / k);
  return {{"categories", categories}, {"mean", mean}};
}

}  // namespace

int cmd_score_vqa(int argc, char** argv) {
  Args args("score-vqa",
            "Score model answers with the official metrics: VQAv2 (vqaEval.py), GQA (eval.py, balanced), "
            "ScienceQA and POPE (LLaVA's eval scripts). Prints the scores; --out writes them as JSON.");
  args.option("results", "model answers: LLaVA answers jsonl, or a VQAv2 results list [{question_id, answer}]", "",
              true)
      .option("annotations", "ground truth: VQAv2 annotations, GQA questions, ScienceQA problems.json, or the POPE "
                             "label folder", "", true)
      .option("questions", "question file. VQAv2 with LLaVA answers: the questions asked (unanswered ones score 0); "
                           "ScienceQA: the problem ids scored; POPE: the question jsonl with categories (needed)")
      .option("format", "vqav2|gqa|scienceqa|pope (default: told from the annotation file's shape)")
      .option("split", "ScienceQA: the problems.json split scored", "test")
      .option("out", "write the scores here as JSON (VQAv2: the official keys)");
  if (!args.parse(argc, argv)) return 0;

  std::string format = args.get("format");
  if (!format.empty() && format != "vqav2" && format != "gqa" && format != "scienceqa" && format != "pope")
    throw UsageError("mole score-vqa: unknown --format '" + format + "' (vqav2, gqa, scienceqa or pope)");
  const std::string annotations = args.get("annotations");
  if (!std::filesystem::exists(annotations)) throw DataError(annotations + ": no such file or folder");
  std::string parse_error;
  json annotation_doc = std::filesystem::is_directory(annotations) ? json() : try_parse(annotations, &parse_error);
  if (format.empty()) format = detect_format(annotations, annotation_doc, parse_error);

  json result;
  if (format == "vqav2") {
    if (annotation_doc.is_null())
      throw DataError(annotations + ": not a VQAv2 annotations JSON file" +
                      (parse_error.empty() ? std::string() : " (" + parse_error + ")"));
    result = score_vqav2_files(args, std::move(annotation_doc));
  } else {
    annotation_doc = json();
    if (format == "gqa")
      result = score_gqa_files(args);
    else if (format == "scienceqa")
      result = score_scienceqa_files(args);
    else
      result = score_pope_files_cmd(args);
  }
  if (args.has("out")) {
    write_json_file(args.get("out"), result);
    std::printf("wrote %s\n", args.get("out").c_str());
  }
  return 0;
}

}  // namespace mole
