#include "eval/routes.h"

#include <stdexcept>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <torch/torch.h>

#include "data/image.h"
#include "data/llava_data.h"
#include "eval/answer.h"
#include "moe/routing_context.h"

namespace mole {

namespace fs = std::filesystem;

std::vector<VqaQuestion> route_questions(const std::string& path) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".jsonl") {
    // A LLaVA question file has "text"; a JSON Lines conversation file has "conversations".
    std::ifstream in(path);
    std::string first;
    std::getline(in, first);
    if (first.find("\"conversations\"") == std::string::npos) return read_llava_questions(path);
  }
  LlavaDataset data = read_llava_dataset(path);
  std::vector<VqaQuestion> questions;
  for (const LlavaRecord& r : data.records) {
    if (r.turns.empty() || r.turns[0].role != "human" || r.images.size() > 1) continue;
    VqaQuestion q;
    q.question_id = r.index;
    q.image = r.images.empty() ? "" : r.images[0];
    std::string text = r.turns[0].text;
    for (size_t at; (at = text.find("<image>")) != std::string::npos;) text.erase(at, 7);
    const size_t a = text.find_first_not_of(" \n"), b = text.find_last_not_of(" \n");
    q.text = a == std::string::npos ? "" : text.substr(a, b - a + 1);
    q.category = r.id;
    questions.push_back(q);
  }
  return questions;
}

RouteCollection collect_routes(TrainedModel& m, const std::vector<VqaQuestion>& questions,
                               const RouteOptions& options) {
  torch::NoGradGuard no_grad;
  RouteCollection out;
  std::vector<VqaQuestion> sample(questions.begin(),
                                  questions.begin() + std::min<int64_t>(options.max_samples, int64_t(questions.size())));
  out.n_samples = int64_t(sample.size());

  // statistics: the prompts (and the answers with --generate), through the same path as evaluation
  RoutingStats stats;
  AnswerOptions answer;
  answer.batch_size = options.batch_size;
  answer.max_new_tokens = options.generate ? options.max_new_tokens : 1;
  answer.image_dir = options.image_dir;
  if (options.by_family) {  // one table per category; the whole is their sum
    std::map<std::string, std::vector<VqaQuestion>> families;
    for (const VqaQuestion& q : sample) families[q.category.empty() ? "(none)" : q.category].push_back(q);
    for (const auto& [family, questions] : families) {
      RoutingStats own;
      answer.routing = &own;
      answer_questions(m, questions, answer);
      out.by_family[family] = own.table();
      stats.merge(own);
    }
  } else {
    answer.routing = &stats;
    answer_questions(m, sample, answer);
  }
  out.stats = stats.table();
  const std::vector<std::string> layers = stats.layers();
  if (layers.empty()) return out;  // no MoLE layer: nothing routed

  // patch pictures: one prefill per image, the top-1 expert of each image token at the chosen layer
  if (options.layer >= int64_t(layers.size()))
    throw std::invalid_argument("routes --layer " + std::to_string(options.layer) + ": the model has " +
                                std::to_string(layers.size()) + " routed layers (0 to " +
                                std::to_string(layers.size() - 1) + "; -1: the middle one)");
  const int64_t layer_index = options.layer >= 0 ? options.layer : int64_t(layers.size()) / 2;
  const std::string& layer = layers[size_t(layer_index)];
  const ImageProcessor images(m.image_config);
  const int64_t side = m.model->config.vision.image_size / m.model->config.vision.patch_size;
  const int64_t n_features = m.model->config.n_image_features();
  const torch::Device device = m.model->parameters().front().device();
  std::map<std::string, torch::Tensor> top1;
  RoutingSinks sinks;
  sinks.top1 = &top1;
  RoutingSinkScope record(sinks);
  std::set<std::string> drawn;  // several questions share an image: each image is drawn once
  for (const VqaQuestion& q : sample) {
    if (int64_t(out.patch_grids.size()) >= options.n_patch_images) break;
    if (q.image.empty() || !drawn.insert(q.image).second) continue;
    const std::string path = options.image_dir.empty() ? q.image : options.image_dir + "/" + q.image;
    const cv::Mat rgb = load_rgb(path);
    torch::Tensor pixels = images.process(rgb).unsqueeze(0).to(device);  // (1, 3, H, W)
    std::vector<int64_t> ids = generation_prompt_ids(q.text, true, *m.tokenizer, m.conversation_template, n_features);
    torch::Tensor input = torch::tensor(ids, torch::kInt64).unsqueeze(0);  // (1, T)
    top1.clear();
    m.model->forward(input.to(device), torch::ones_like(input).to(device), pixels);
    if (!top1.count(layer)) continue;
    const torch::Tensor experts = top1.at(layer);  // (T) for the language layers
    const torch::Tensor is_image = (input[0] == m.model->config.image_token_index);  // (T)
    if (experts.size(0) != input.size(1)) continue;  // a vision-tower layer: tokens are not the prompt's
    torch::Tensor patch_experts = experts.masked_select(is_image);
    // "full" strategy: the first image feature is CLS, not a patch
    if (patch_experts.size(0) == side * side + 1) patch_experts = patch_experts.slice(0, 1);
    if (patch_experts.size(0) != side * side) continue;
    PatchGrid grid;
    cv::Mat shown = images.square_and_resize(rgb);
    if (m.image_config.do_center_crop)
      shown = center_crop(shown, int(m.image_config.crop_height), int(m.image_config.crop_width));
    grid.image_rgb = shown;
    grid.grid_h = grid.grid_w = int(side);
    grid.top_expert.assign(patch_experts.data_ptr<int64_t>(), patch_experts.data_ptr<int64_t>() + side * side);
    grid.layer = layer;
    grid.title = q.image;
    out.patch_grids.push_back(std::move(grid));
  }
  return out;
}

std::string metrics_log_for(const std::string& model_path) {
  fs::path p = fs::absolute(model_path);
  for (int up = 0; up < 3 && !p.empty(); ++up, p = p.parent_path())
    if (fs::exists(p / "metrics.jsonl")) return (p / "metrics.jsonl").string();
  return "";
}

}  // namespace mole
