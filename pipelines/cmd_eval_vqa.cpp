// mole eval-vqa --model RUN_OR_CHECKPOINT --questions Q --images DIR --out DIR [--annotations A]
// Answers a question file with batched greedy decoding (LLaVA's model_vqa_loader defaults: the model's template,
// max_new_tokens 128) and writes DIR/answers.jsonl in LLaVA's answer format and DIR/results.json in VQAv2's
// submission format (answers through LLaVA's EvalAIAnswerProcessor, as scripts/convert_vqav2_for_submission.py).
// With --annotations (VQAv2 format) it scores them with the official metric (eval/vqa_metrics.h) and writes
// DIR/scores.json: overall, perQuestionType, perAnswerType, evalQA, plus perCategory (the question file's
// "category", e.g. the task family of the shapes set).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/limits.h"
#include "core/json_config.h"
#include "eval/answer.h"
#include "eval/vqa_data.h"
#include "eval/vqa_metrics.h"
#include "model/trained_model.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

namespace {

const char* kShortAnswerSuffix = "\nAnswer the question using a single word or phrase.";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// LLaVA question jsonl as it is; a VQAv2 questions JSON with each image named by `pattern` (printf, image_id)
// and LLaVA's short-answer suffix appended, as llava_vqav2_mscoco_test-dev2015.jsonl has it.
std::vector<VqaQuestion> read_questions(const std::string& path, const std::string& pattern) {
  if (ends_with(path, ".jsonl")) return read_llava_questions(path);
  std::vector<VqaQuestion> questions = read_vqav2_questions(path);
  for (VqaQuestion& q : questions) {
    try {
      q.image = image_name_from_pattern(pattern, q.image_id);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(std::string("eval-vqa --image-pattern: ") + e.what());
    }
    q.text += kShortAnswerSuffix;
  }
  return questions;
}

}  // namespace

int cmd_eval_vqa(int argc, char** argv) {
  Args args("eval-vqa",
            "Answer a VQA question file with greedy decoding and score it with the official VQAv2 metric.");
  args.option("model", "a mole run, checkpoint or final folder, or a llava-hf folder", "", true)
      .option("adapter", "an adapter folder (mole's, or a PEFT LoRA one) to put on the model first", "")
      .option("template", "conversation template instead of the model's (e.g. the one an --adapter was trained "
                          "with: vicuna_v1, llava_llama_2, plain, mistral_instruct, chatml, llama3)", "")
      .option("questions", "LLaVA question .jsonl, or VQAv2 questions .json", "", true)
      .option("images", "folder the questions' images are in", "")
      .option("out", "output folder (answers.jsonl, results.json, scores.json)", "", true)
      .option("annotations", "ground truth: score the answers (VQAv2 annotations; GQA / ScienceQA / POPE files "
                             "as score-vqa reads them with --format)", "")
      .option("format", "vqav2, gqa, scienceqa or pope: which metric scores the answers", "vqav2")
      .option("image-pattern", "VQAv2 questions: image file name from image_id (one integer conversion, e.g. %012lld; %% for %)", "COCO_val2014_%012lld.jpg")
      .integer("limit", "answer only the first N questions and score against their annotations (0: all)", 0, 0,
               kMaxCount)
      .integer("batch-size", "questions per generate() batch", 16, 1, kMaxBatch)
      .integer("max-new-tokens", "longest answer in tokens (LLaVA: 128)", 128, 1, kMaxSequence)
      .option("device", "cpu or cuda", "cpu")
      .option("model-id", "model_id written in answers.jsonl", "mole");
  if (!args.parse(argc, argv)) return 0;

  const auto start = std::chrono::steady_clock::now();
  TrainedModel model = load_trained(args.get("model"), torch::Device(args.get("device")));
  if (args.has("adapter")) put_adapter(model, args.get("adapter"));
  if (args.has("template")) model.conversation_template = parse_template(args.get("template"));
  std::vector<VqaQuestion> questions = read_questions(args.get("questions"), args.get("image-pattern"));
  const int64_t limit = args.get_int("limit");
  if (limit > 0 && int64_t(questions.size()) > limit) questions.resize(size_t(limit));
  AnswerOptions options;
  options.batch_size = args.get_int("batch-size");
  options.max_new_tokens = args.get_int("max-new-tokens");
  options.image_dir = args.get("images");
  // progress on stderr: a line rewritten in place on a terminal, a line per tenth otherwise
  const auto answering = std::chrono::steady_clock::now();
  const bool tty = isatty(fileno(stderr));
  size_t next_line = 0;
  options.progress = [&](size_t done, size_t total) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - answering).count();
    const double rate = s > 0 ? double(done) / s : 0.0;
    if (!tty && done < total && done < next_line) return;
    next_line = done + std::max<size_t>(1, total / 10);
    std::fprintf(stderr, "%sanswered %zu / %zu (%.1f questions/s, %.0f s left)%s", tty ? "\r" : "", done, total,
                 rate, rate > 0 ? double(total - done) / rate : 0.0, tty && done < total ? "" : "\n");
  };
  const std::vector<ModelAnswer> answers = answer_questions(model, questions, options);

  const std::string out = args.get("out");
  std::filesystem::create_directories(out);
  write_answers_jsonl(out + "/answers.jsonl", answers, args.get("model-id"));
  json results = json::array();
  for (const ModelAnswer& a : answers)
    results.push_back({{"question_id", a.question_id}, {"answer", eval_ai_answer_processor(a.text)}});
  write_json_file(out + "/results.json", results);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%zu answers in %.1f s -> %s/answers.jsonl\n", answers.size(), seconds, out.c_str());
  if (args.has("annotations") && args.get("format") != "vqav2") {
    // The other benchmarks score LLaVA's answer file exactly as `mole score-vqa` does.
    std::vector<std::string> words = {"mole", "score-vqa", "--results", out + "/answers.jsonl", "--annotations",
                                      args.get("annotations"), "--format", args.get("format"),
                                      "--out", out + "/scores.json"};
    if (args.get("format") == "scienceqa" || args.get("format") == "pope")  // they read the question file too
      words.insert(words.end(), {"--questions", args.get("questions")});
    std::vector<char*> argv_score;
    for (auto& w : words) argv_score.push_back(w.data());
    return cmd_score_vqa(int(argv_score.size()), argv_score.data());
  }
  if (args.has("annotations")) {
    json scores = score_answers_vqav2(answers, args.get("annotations"), limit > 0);
    write_json_file(out + "/scores.json", scores);
    std::printf("VQAv2 accuracy: %.2f\n", scores["overall"].get<double>());
    for (const auto& [type, acc] : scores["perAnswerType"].items())
      std::printf("  %-10s %.2f\n", type.c_str(), acc.get<double>());
    for (const auto& [category, acc] : scores["perCategory"].items())
      std::printf("  [%s] %.2f\n", category.c_str(), acc.get<double>());
  }
  return 0;
}

}  // namespace mole
