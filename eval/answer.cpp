#include "eval/answer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>

#include <torch/torch.h>

#include "core/json_config.h"
#include "eval/vqa_metrics.h"
#include "model/adapters.h"
#include "language/generate.h"
#include "moe/routing_context.h"

namespace mole {

std::vector<int64_t> generation_prompt_ids(const std::string& question, bool has_image, const Tokenizer& tokenizer,
                                           Template conversation_template, int64_t n_image_tokens) {
  const std::string text = has_image ? "<image>\n" + question : question;
  // The template's ids for the question and an empty answer; the prompt is everything before the first
  // supervised position, i.e. before the answer (LLaVA's get_prompt with the assistant message None).
  TokenizedSample s = tokenize_conversation({{"human", text}, {"gpt", ""}}, tokenizer, conversation_template,
                                            n_image_tokens, 0);
  if (!s.problem.empty()) throw std::runtime_error("cannot build a prompt for \"" + question + "\": " + s.problem);
  size_t end = 0;
  while (end < s.labels.size() && s.labels[end] == kIgnoreIndex) ++end;
  s.input_ids.resize(end);
  return s.input_ids;
}

void put_adapter(TrainedModel& m, const std::string& dir) {
  if (!adapter_parameters(m.model).empty())
    throw ConfigError(m.source + " carries adapters already; --adapter " + dir +
                      " goes on a model without them (a llava-hf folder, or an align / pretrain run)");
  const AdapterConfig config = load_adapter(dir, m.model);
  m.spec.adapter = config.to_json();
  m.model->eval();
}

namespace {

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

}  // namespace

std::vector<ModelAnswer> answer_questions(TrainedModel& m, const std::vector<VqaQuestion>& questions,
                                          const AnswerOptions& options) {
  torch::NoGradGuard no_grad;
  m.model->eval();
  const Tokenizer& tok = *m.tokenizer;
  const ImageProcessor images(m.image_config);
  const int64_t n_image_tokens = m.model->config.n_image_features();
  const torch::Device device = m.model->parameters().front().device();
  const int64_t pad = tok.pad_id() >= 0 ? tok.pad_id() : std::max<int64_t>(0, tok.unk_id());
  std::optional<RoutingSinkScope> record;  // the caller's statistics, for prompts and generated tokens
  if (options.routing) record.emplace(RoutingSinks{options.routing});

  std::vector<ModelAnswer> answers;
  for (size_t start = 0; start < questions.size(); start += size_t(options.batch_size)) {
    const size_t end = std::min(questions.size(), start + size_t(options.batch_size));
    std::vector<std::vector<int64_t>> prompts;
    std::vector<torch::Tensor> pixels;
    size_t longest = 0;
    for (size_t i = start; i < end; ++i) {
      const VqaQuestion& q = questions[i];
      const bool has_image = !q.image.empty();
      prompts.push_back(generation_prompt_ids(q.text, has_image, tok, m.conversation_template, n_image_tokens));
      longest = std::max(longest, prompts.back().size());
      if (has_image)
        pixels.push_back(images.load(options.image_dir.empty() ? q.image : options.image_dir + "/" + q.image));
    }
    const int64_t b = int64_t(prompts.size());
    torch::Tensor ids = torch::full({b, int64_t(longest)}, pad, torch::kInt64);  // (B, T), left-padded
    torch::Tensor mask = torch::zeros({b, int64_t(longest)}, torch::kInt64);    // (B, T)
    for (int64_t i = 0; i < b; ++i) {
      const auto& p = prompts[size_t(i)];
      const int64_t offset = int64_t(longest - p.size());
      ids[i].slice(0, offset).copy_(torch::tensor(p, torch::kInt64));
      mask[i].slice(0, offset).fill_(1);
    }
    GenerateOptions g;
    g.max_new_tokens = options.max_new_tokens;
    g.eos_token_ids = template_stop_ids(m.conversation_template, tok);  // eos, and <|im_end|> / <|eot_id|>
    g.pad_token_id = pad;
    torch::Tensor out = m.model->generate(ids.to(device), mask.to(device),
                                          pixels.empty() ? torch::Tensor() : torch::stack(pixels).to(device), g)
                            .cpu();  // (B, N)
    for (int64_t i = 0; i < b; ++i) {
      std::vector<int64_t> generated;
      for (int64_t t = 0; t < out.size(1); ++t) {
        const int64_t id = out[i][t].item<int64_t>();
        if (std::find(g.eos_token_ids.begin(), g.eos_token_ids.end(), id) != g.eos_token_ids.end()) break;
        generated.push_back(id);
      }
      const VqaQuestion& q = questions[start + size_t(i)];
      answers.push_back({q.question_id, q.image.empty() ? q.text : "<image>\n" + q.text,
                         trim(tok.decode(generated, true)), q.category, generated});
    }
    if (options.progress) options.progress(answers.size(), questions.size());
  }
  return answers;
}

void write_answers_jsonl(const std::string& path, const std::vector<ModelAnswer>& answers,
                         const std::string& model_id) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream file(tmp, std::ios::trunc);
    for (size_t i = 0; i < answers.size(); ++i) {
      const ModelAnswer& a = answers[i];
      file << json{{"question_id", a.question_id}, {"prompt", a.prompt}, {"text", a.text},
                   {"answer_id", std::to_string(i)}, {"model_id", model_id}, {"metadata", json::object()}}
                  .dump()
           << "\n";
    }
    if (!file) throw std::runtime_error(path + ": write failed");
  }
  std::filesystem::rename(tmp, path);
}

json score_answers_vqav2(const std::vector<ModelAnswer>& answers, const std::string& annotations_path,
                         bool only_answered) {
  auto annotations = read_vqav2_annotations(annotations_path);
  if (only_answered) {
    std::map<int64_t, VqaAnnotation> kept;
    for (const ModelAnswer& a : answers)
      if (annotations.count(a.question_id)) kept[a.question_id] = annotations.at(a.question_id);
    annotations = std::move(kept);
  }
  std::map<int64_t, std::string> predictions;
  for (const ModelAnswer& a : answers) predictions[a.question_id] = eval_ai_answer_processor(a.text);
  const VqaScore score = score_vqav2(annotations, predictions);
  json out = score.to_json();
  std::map<std::string, std::pair<double, int64_t>> by_category;
  for (const ModelAnswer& a : answers) {
    if (a.category.empty()) continue;
    auto& [sum, n] = by_category[a.category];
    sum += score.per_question.at(a.question_id);
    ++n;
  }
  json per_category = json::object();
  for (const auto& [category, sum_n] : by_category)
    per_category[category] = py_round(100.0 * sum_n.first / double(sum_n.second), 2);
  out["perCategory"] = per_category;
  return out;
}

}  // namespace mole
