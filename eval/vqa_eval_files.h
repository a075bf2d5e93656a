// Reading what the evaluation scripts read: model results (LLaVA answer jsonl, VQAv2 results JSON) and the
// ground truth of GQA, ScienceQA and POPE (VQAv2's is read by eval/vqa_data.h). The metrics themselves are in
// eval/vqa_metrics.h. Every error is a DataError that names the file and the line or entry.
//
// Reference: LLaVA scripts/convert_vqav2_for_submission.py, scripts/convert_gqa_for_eval.py,
// llava/eval/eval_science_qa.py, llava/eval/eval_pope.py; GT-Vision-Lab/VQA vqaTools/vqa.py (loadRes);
// GQA's eval.py (questions file, isBalanced).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/vqa_metrics.h"

namespace mole {

// One line of a LLaVA answers file: {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}.
struct LlavaAnswer {
  std::string question_id;  // a JSON string as written, or a JSON integer's decimal digits
  bool id_is_integer = false;
  std::string text, prompt;  // prompt is "" when the line has none
  int64_t line = 0;          // 1-based, for messages
};

// JSON Lines; blank lines are skipped. A line that is not JSON, or has no integer/string "question_id" or no
// string "text", is an error naming the line (LLaVA's converters skip unparsable lines; a scorer should not).
std::vector<LlavaAnswer> read_llava_answers(const std::string& path);

// convert_vqav2_for_submission.py: question id -> eval_ai_answer_processor(text); a later line for the same
// question replaces an earlier one (the script builds a dict). `split` (the question file's ids, when
// given) is what the script iterates: a question of the split without an answer gets "", answers for
// questions outside it are dropped. Ids must be integers (else an error naming the line).
std::map<int64_t, std::string> llava_answers_for_vqav2(const std::vector<LlavaAnswer>& answers,
                                                       const std::string& path,
                                                       const std::vector<int64_t>* split = nullptr);

// A VQAv2 results file [{"question_id": int, "answer": str}, ...], answers used as given; a repeated id
// keeps the last answer, as the official loader's index does. Errors name the entry.
std::map<int64_t, std::string> read_vqav2_results(const std::string& path);

// The question ids of a question file, in file order, as text (an integer id as its decimal digits). Told
// apart by content: VQAv2 questions JSON ({"questions": [{"question_id"}]}), a JSON list of LLaVA records
// ({"id"} or {"question_id"}: ScienceQA's llava_test_CQM-A.json), or LLaVA question jsonl ({"question_id"}).
std::vector<std::string> read_question_ids(const std::string& path);

// The question ids of parsed VQAv2 annotations ({"annotations": [...]}) in file order: the order in which
// the official evaluator sums (see score_vqav2).
std::vector<int64_t> vqav2_annotation_order(const nlohmann::json& doc, const std::string& path);

// convert_gqa_for_eval.py: question id -> gqa_prediction(text); later lines replace earlier ones.
std::map<std::string, std::string> llava_answers_for_gqa(const std::vector<LlavaAnswer>& answers);

// GQA questions file ({"<qid>": {"answer": str, "isBalanced": bool, ...}}): the balanced questions' answers,
// which eval.py scores. Errors name the question id.
std::map<std::string, std::string> read_gqa_gold(const std::string& path);

// ScienceQA problems.json ({"<pid>": {"choices": [...], "answer": int, "split": str, ...}}): the problems
// of `split` (eval_science_qa.py takes them from pid_splits.json, which lists the problems whose "split" is
// that name). `only` (when not empty) restricts them to those ids, e.g. the ids of a LLaVA question file.
std::map<std::string, ScienceQaProblem> read_scienceqa_problems(const std::string& path, const std::string& split,
                                                                const std::vector<std::string>& only = {});

// LLaVA answers keyed by question id (later lines replace earlier ones), for score_scienceqa.
std::map<std::string, ScienceQaPrediction> llava_answers_for_scienceqa(const std::vector<LlavaAnswer>& answers);

// The "label" of each line of a POPE annotation file (coco_pope_<category>.json, JSON Lines), in order.
std::vector<std::string> read_pope_labels(const std::string& path);

// eval_pope.py: for each coco_pope_<category>.json in `annotation_dir`, the answers whose question (looked
// up by question id in `questions`, a LLaVA question jsonl with "category") is of that category, in answer
// file order, paired in order with that file's labels and scored. An answer whose question is not in the
// question file is an error (eval_pope.py: KeyError).
std::map<std::string, PopeScore> score_pope_files(const std::vector<LlavaAnswer>& answers,
                                                  const std::string& questions_path,
                                                  const std::string& annotation_dir);

}  // namespace mole
