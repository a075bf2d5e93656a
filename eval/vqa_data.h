// Evaluation question files: VQAv2 (questions JSON + annotations JSON, GT-Vision-Lab format) and LLaVA's
// question jsonl ({"question_id", "image", "text", "category"}). See docs/EVAL.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mole {

struct VqaQuestion {
  int64_t question_id = 0;
  int64_t image_id = -1;   // VQAv2; -1 when the file has none
  std::string image;       // LLaVA jsonl: file name relative to the image folder; "" for VQAv2 / text-only
  std::string text;        // the question as given (LLaVA files already carry any answer-style suffix)
  std::string category;    // LLaVA jsonl "category"; "" otherwise
};

struct VqaAnnotation {
  int64_t question_id = 0;
  int64_t image_id = -1;
  std::string question_type, answer_type, multiple_choice_answer;
  std::vector<std::string> answers;  // the annotators' answers (10 in VQAv2)
};

// {"questions": [{"question_id", "image_id", "question"}]}. Errors (DataError) name the file and the entry.
std::vector<VqaQuestion> read_vqav2_questions(const std::string& path);
// {"annotations": [{"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
// "answers": [{"answer", ...}]}]} keyed by question id (a repeated id is an error).
std::map<int64_t, VqaAnnotation> read_vqav2_annotations(const std::string& path);
// Calls fn(object, where, line number) for each non-blank line of a JSON Lines file; a line that is not valid
// JSON or not an object is a DataError naming the file and line ("<path>: line N").
void for_each_json_line(const std::string& path,
                        const std::function<void(const nlohmann::json&, const std::string&, int64_t)>& fn);

// One JSON object a line; blank lines are skipped; a bad line is an error naming its line number.
std::vector<VqaQuestion> read_llava_questions(const std::string& path);

// An image file name from an image id and a printf-like pattern, without printf: the pattern holds exactly one
// integer conversion %[0][width](d|i|u|ld|lld|lu|llu) (width <= 64) and any number of %% for a literal %;
// e.g. "COCO_val2014_%012lld.jpg" and id 42 -> "COCO_val2014_000000000042.jpg". Anything else (%s, two
// conversions, none) is a std::invalid_argument that quotes the pattern and says what is wrong.
std::string image_name_from_pattern(const std::string& pattern, int64_t image_id);

}  // namespace mole
