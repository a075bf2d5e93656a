// Answering questions with a trained model, as LLaVA's model_vqa_loader.py does: the question (with "<image>\n"
// in front when it has an image) as the one user turn of the model's conversation template, the prompt ending
// where the assistant's answer starts ("... ASSISTANT:"), greedy decoding with the KV cache, max_new_tokens 128,
// the answer decoded without special tokens and trimmed. Prompts are batched, left-padded.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/vqa_data.h"
#include "model/trained_model.h"
#include "moe/routing_stats.h"

namespace mole {

// The prompt ids of one question: BOS ... up to the assistant's answer, the image tag expanded.
std::vector<int64_t> generation_prompt_ids(const std::string& question, bool has_image, const Tokenizer& tokenizer,
                                           Template conversation_template, int64_t n_image_tokens);

struct AnswerOptions {
  int64_t batch_size = 16;
  int64_t max_new_tokens = 128;
  std::string image_dir;          // question images are relative to it
  RoutingStats* routing = nullptr;  // routing statistics of prompts and generated tokens, when given
  std::function<void(size_t answered, size_t total)> progress;  // after each batch, when given
};

// Puts an adapter folder (mole's format, or PEFT's LoRA with an optional modules_to_save projector) on a loaded
// model, for --adapter: a model that carries adapters already is refused (ConfigError naming both).
void put_adapter(TrainedModel& m, const std::string& dir);

struct ModelAnswer {
  int64_t question_id = 0;
  std::string prompt;  // the question as given to the template (with "<image>\n" when it has an image)
  std::string text;    // the decoded answer, trimmed
  std::string category;
  std::vector<int64_t> ids;  // the generated ids, up to (not including) the stop token
};

// Answers every question, in order. An image that cannot be read is an ImageError naming it (an evaluation
// must answer every question, so it stops rather than skips).
std::vector<ModelAnswer> answer_questions(TrainedModel& model, const std::vector<VqaQuestion>& questions,
                                          const AnswerOptions& options);

// LLaVA's answer file: one {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} per line,
// written to a temporary file and renamed.
void write_answers_jsonl(const std::string& path, const std::vector<ModelAnswer>& answers,
                         const std::string& model_id);

// The official VQAv2 score of the answers (each through LLaVA's EvalAIAnswerProcessor first, as
// convert_vqav2_for_submission.py) against a VQAv2 annotations file: the evaluator's keys (overall,
// perQuestionType, perAnswerType, evalQA) plus perCategory, the mean accuracy per question "category".
// only_answered: score against the annotations of the answered questions only (a subset run); otherwise the
// answers must cover exactly the annotated questions, as the official evaluator requires.
nlohmann::json score_answers_vqav2(const std::vector<ModelAnswer>& answers, const std::string& annotations_path,
                                   bool only_answered = false);

}  // namespace mole
