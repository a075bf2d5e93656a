// The official VQA-style metrics, reproduced number for number (see docs/EVAL.md for every table and quirk):
//   VQAv2     GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py (VQAEval: processPunctuation,
//             processDigitArticle, evaluate, setAccuracy, setEvalQA) and PythonHelperTools/vqaTools/vqa.py
//             (VQA.loadRes: the results must be for annotated questions);
//   LLaVA     llava/eval/m4c_evaluator.py (EvalAIAnswerProcessor, applied by scripts/convert_vqav2_for_submission.py),
//             scripts/convert_gqa_for_eval.py + GQA's eval.py (accuracy over balanced questions),
//             llava/eval/eval_science_qa.py (letter extraction, get_pred_idx), llava/eval/eval_pope.py.
// Text is handled with Python's str rules (eval/py_text.h): lower(), split(), strip() and the regex \d are
// Unicode-aware there, so they are here too.
// Reading the result and annotation files of each benchmark: eval/vqa_eval_files.h.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/vqa_data.h"

namespace mole {

// ---- VQAv2 answer normalisation (vqaEval.py) ----

// processPunctuation: each of the 21 marks is deleted when the input has it next to a space (or has
// digit,comma,digit anywhere), else replaced by a space; then every '.' not followed by a digit is deleted,
// at most 32 of them (the original passes re.UNICODE, 32, where re.sub takes its count).
std::string vqa_process_punctuation(const std::string& text);
// processDigitArticle: lower-case, split on whitespace, number words -> digits, drop a/an/the, restore
// contractions ("dont" -> "don't"; the table's "somebody'd" -> "somebodyd" is reversed in the original and
// kept), join with single spaces.
std::string vqa_process_digit_article(const std::string& text);
// What evaluate() does to every answer first: '\n' and '\t' -> ' ', then strip().
std::string vqa_clean_whitespace(const std::string& text);

// LLaVA's EvalAIAnswerProcessor (m4c_evaluator.py), applied to model outputs before VQAv2 submission:
// lower(); delete ',' and '?'; "'s" -> " 's"; strip; '\n' '\t' -> ' '; strip; processPunctuation;
// processDigitArticle. Its punctuation step has a different comma regex, (?<=\d)(\,)+(?=\d), but commas
// are already gone by then, so neither regex can match and the official processPunctuation is the same.
std::string eval_ai_answer_processor(const std::string& text);

// One question's VQA accuracy in [0, 1]. Every answer and the prediction get vqa_clean_whitespace; ONLY IF
// the cleaned ground-truth answers are not all identical are they and the prediction normalised
// (processPunctuation, then processDigitArticle). Then acc_i = min(1, #{j != i : gt_j == pred} / 3) and the
// result is their mean, summed in order in double precision as Python does (10 answers, m of them matching:
// m = 0, 1, 2, 3, >= 4 -> 0, 0.3, 0.6, 0.9, 1).
// The original leaves out "every answer dict equal to this one" rather than "this one": the same thing on
// real annotations, whose answer_id values differ. Throws DataError when gt_answers is empty.
double vqa_question_accuracy(const std::vector<std::string>& gt_answers, const std::string& prediction);

// Python's round(x, ndigits): the double nearest the correctly rounded decimal (ties to even on the exact
// binary value, as CPython's dtoa does).
double py_round(double x, int ndigits);

// ---- VQAv2 scorer (VQAEval.evaluate + setAccuracy) ----

struct VqaScore {
  // Percentages as the official code computes them before rounding: 100 * sum(acc) / n, the sums taken in
  // the annotation file's order. to_json() rounds them to 2 decimals as setAccuracy does.
  double overall = 0;
  std::map<std::string, double> per_question_type, per_answer_type;
  std::map<int64_t, double> per_question;  // accuracy in [0, 1]; evalQA holds round(100 * acc, 2)
  // {"overall": x, "perQuestionType": {type: x}, "perAnswerType": {type: x},
  //  "evalQA": {"<question id>": round(100 * acc, 2)}}: vqaEval.accuracy plus vqaEval.evalQA.
  nlohmann::json to_json() const;
};

// Scores `answers` (question id -> answer, used as given) against the annotations. The official loader
// (VQA.loadRes, then evaluate) needs an answer for exactly the annotated questions: any missing or extra
// question id is a DataError naming how many and the first few. `order` is the annotation file's order of
// question ids (Python sums the accuracies in that order, which can decide a tie at the second decimal);
// empty means ascending question id. Throws DataError when there are no annotations.
VqaScore score_vqav2(const std::map<int64_t, VqaAnnotation>& annotations,
                     const std::map<int64_t, std::string>& answers, const std::vector<int64_t>& order = {});

// ---- GQA (convert_gqa_for_eval.py + GQA eval.py) ----

// What convert_gqa_for_eval.py makes of a model output: text.rstrip('.').lower().
std::string gqa_prediction(const std::string& text);

struct AccuracyScore {
  double accuracy = 0;  // percent, unrounded
  int64_t correct = 0, count = 0;
  nlohmann::json to_json() const;  // {"accuracy", "correct", "count"}
};

// Exact match over the gold questions (question id -> answer; GQA eval.py scores the balanced ones):
// accuracy = mean(correct) * 100. `predictions` are used as given (apply gqa_prediction to raw model
// outputs). A gold question without a prediction is a DataError (eval.py: "missing predictions"); extra
// predictions are ignored, as there. No gold questions -> accuracy 0 (eval.py's avg of an empty list).
AccuracyScore score_gqa(const std::map<std::string, std::string>& gold,
                        const std::map<std::string, std::string>& predictions);

// ---- ScienceQA (eval_science_qa.py) ----

// The answer eval_science_qa.py parses from an output t: t itself when t is one of "A".."E"; else t[0]
// when t[0] is one of them and t[1:3] == ". "; else the letter of the single match of the regex
// "The answer is ([A-Z])." (the '.' is any character but '\n'); else "FAILED". The letter may lie past
// the problem's choices (or past "E"): such an answer scores as wrong.
std::string scienceqa_parse(const std::string& output);
// scienceqa_parse(output) when it names one of the first min(n_options, 5) options (get_pred_idx gives
// its index), else "FAILED" (get_pred_idx gives -1: never correct).
std::string scienceqa_letter(const std::string& output, int n_options);

struct ScienceQaProblem {
  int answer = 0;     // index of the right choice
  int n_choices = 0;  // len(choices)
};

struct ScienceQaPrediction {
  std::string text;    // the model's output
  std::string prompt;  // the prompt as logged; "<image>" in it marks the question multimodal (IMG-Accuracy)
};

struct ScienceQaScore {
  double accuracy = 0;      // correct / count * 100
  double img_accuracy = 0;  // the same over multimodal questions (0 when there are none)
  int64_t correct = 0, count = 0, img_correct = 0, img_count = 0;
  std::map<std::string, int> pred_index;  // problem id -> predicted index, -1 when FAILED or out of range
  nlohmann::json to_json() const;         // {"acc", "correct", "count", "img_acc", "img_count", "results"}
};

// Every problem of the split is scored; a problem without a prediction counts as "FAILED" (wrong), as in
// eval_science_qa.py; predictions for other ids are ignored. Empty `problems` -> DataError.
ScienceQaScore score_scienceqa(const std::map<std::string, ScienceQaProblem>& problems,
                               const std::map<std::string, ScienceQaPrediction>& predictions);

// ---- POPE (eval_pope.py) ----

// "no" when the text before the first '.', with ',' deleted and split on ' ' (single spaces), has a token
// exactly "No", "not" or "no"; else "yes".
std::string pope_parse(const std::string& text);

struct PopeScore {
  // yes is the positive class. Where Python would divide by zero (no "yes" predicted, no "yes" label,
  // precision + recall = 0) the value is 0 here.
  double accuracy = 0, precision = 0, recall = 0, f1 = 0, yes_ratio = 0;
  int64_t tp = 0, fp = 0, tn = 0, fn = 0, n = 0;
  nlohmann::json to_json() const;  // {"accuracy", "precision", "recall", "f1", "yes_ratio", "tp", ..., "n"}
};

// predictions[i] (already pope_parse'd: "no" -> negative, anything else positive) is paired with labels[i]
// ("no" -> negative, anything else positive), in order, as eval_pope.py zips them. The lists must have the
// same length (eval_pope.py would silently drop the tail): otherwise DataError. Empty -> DataError.
PopeScore score_pope(const std::vector<std::string>& predictions, const std::vector<std::string>& labels);

}  // namespace mole
