#include "pipelines/train_setup.h"

#include <filesystem>
#include <fstream>
#include <optional>

#include "core/json_config.h"
#include "language/tokenizer.h"
#include "model/adapters.h"
#include "model/llava_assembly.h"
#include "model/llava_loader.h"

namespace mole {

namespace fs = std::filesystem;

namespace {
std::string absolute(const std::string& path) { return path.empty() ? path : fs::absolute(path).string(); }
}  // namespace

ModelSpec spec_for(const TrainConfig& c) {
  ModelSpec spec;
  spec.stage = enum_name(c.stage);
  spec.base = c.model.base.empty() ? "" : absolute(resolve_model_dir(c.model.base));
  spec.vision_tower = absolute(c.model.vision_tower);
  spec.language_model = absolute(c.model.language_model);
  if (!spec.language_model.empty())
    spec.projector_config = c.model.projector_config.is_object() ? c.model.projector_config : json::object();
  spec.projector = absolute(c.model.projector);
  spec.tokenizer = absolute(!c.model.tokenizer.empty() ? c.model.tokenizer
                            : spec.base.empty()        ? spec.language_model
                                                       : spec.base);
  spec.conversation_template = enum_name(c.data.conversation_template);
  spec.image_processor = c.model.image_processor;
  if (!spec.base.empty()) {
    // An original LLaVA folder holds the language model and the projector; LLaVA loads the vision tower by the
    // name in mm_vision_tower, which mole cannot download: the user gives that CLIP folder.
    const bool original = is_original_llava(spec.base);
    if (original && spec.vision_tower.empty())
      throw ConfigError("model.vision_tower: model.base " + spec.base + " is an original LLaVA folder (mm_vision_tower '" +
                        read_json_file(spec.base + "/config.json").value("mm_vision_tower", std::string()) +
                        "') whose vision tower is not inside: give that CLIP folder as model.vision_tower");
    if (!original && !spec.vision_tower.empty())
      throw ConfigError("model.vision_tower: model.base " + spec.base + " is a llava-hf folder with a vision tower "
                        "of its own; model.vision_tower goes with model.language_model or an original LLaVA base");
  }
  const bool from_parts = !spec.vision_tower.empty();
  // The tokenizer's <image> is the placeholder the data carries (from parts, build_model adds it to a stock
  // tokenizer and grows the vocabulary for it).
  std::optional<Tokenizer> tok;
  if (spec.base.empty() && !from_parts) tok = Tokenizer::load(spec.tokenizer);
  if (spec.base.empty() && !from_parts) {
    // The tokenizer decides the vocabulary and the special ids of a model trained from scratch.
    if (tok->image_token_id() < 0) throw ConfigError(spec.tokenizer + ": the tokenizer has no <image> token");
    spec.init = c.model.init;
    spec.init["text_config"]["vocab_size"] = tok->vocab_size();
    spec.init["image_token_index"] = tok->image_token_id();
    spec.init["pad_token_id"] = tok->pad_id();
    spec.init["text_config"]["pad_token_id"] = tok->pad_id();
    spec.init["text_config"]["bos_token_id"] = tok->bos_id();
    spec.init["text_config"]["eos_token_id"] = tok->eos_id();
  }
  if (c.stage == Stage::kFinetune) {
    AdapterConfig adapter = *c.model.adapter;
    adapter.base_model = spec.base.empty() ? spec.language_model : spec.base;
    adapter.base_config_hash = base_config_hash(from_parts ? parts_llava_config(parts_of(spec, *tok), "model")
                                                           : read_llava_config(spec.base));
    spec.adapter = adapter.to_json();
  }
  return spec;
}

NamedTensors select_trainable(Llava& model, const TrainConfig& c) {
  NamedTensors out;
  for (auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    bool train = false;
    if (c.stage == Stage::kPretrain) train = true;
    else if (name.rfind("multi_modal_projector.", 0) == 0) train = c.stage == Stage::kAlign || c.model.train_projector;
    else train = c.stage == Stage::kFinetune && name.find(".adapter.") != std::string::npos;
    p.set_requires_grad(train);
    if (train) out.emplace_back(name, p);
  }
  if (out.empty()) throw ConfigError("stage " + enum_name(c.stage) + ": nothing to train");
  return out;
}

int64_t count_elements(const NamedTensors& params) {
  int64_t n = 0;
  for (const auto& [name, p] : params) n += p.numel();
  return n;
}

std::shared_ptr<const LlavaDataset> read_training_data(const TrainConfig& c) {
  auto merged = std::make_shared<LlavaDataset>();
  for (const std::string& file : c.data.train) {
    LlavaDataset d = read_llava_dataset(file, c.data.strict);
    merged->path += (merged->path.empty() ? "" : " + ") + file;
    merged->n_read += d.n_read;
    merged->skipped.merge(d.skipped);
    for (LlavaRecord& r : d.records) merged->records.push_back(std::move(r));
  }
  if (!c.data.text_corpus.empty()) {
    std::ifstream in(c.data.text_corpus);
    if (!in) throw DataError(c.data.text_corpus + ": cannot open the text corpus");
    std::string line;
    for (int64_t i = 0; std::getline(in, line); ++i) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      LlavaRecord r;
      r.index = i;
      r.id = "corpus-" + std::to_string(i);
      r.turns = {{"human", ""}, {"gpt", line}};
      merged->records.push_back(std::move(r));
      ++merged->n_read;
    }
    merged->path += (merged->path.empty() ? "" : " + ") + c.data.text_corpus;
  }
  return merged;
}

LoaderOptions loader_options(const TrainConfig& c, const Llava& model) {
  LoaderOptions lo;
  lo.batch_size = c.data.batch_size;
  lo.n_workers = c.data.workers;
  lo.seed = c.run.seed;
  lo.group_by_length = c.data.group_by_length;
  lo.packing = c.data.packing;
  lo.n_epochs = 0;  // the step count decides the end
  lo.conversation_template = c.data.conversation_template;
  lo.max_len = c.data.max_len;
  lo.n_image_tokens = model->config.n_image_features();
  lo.image_dir = c.data.images;
  lo.strict = c.data.strict;
  lo.family_source = c.data.families;
  for (size_t i = 0; i < c.data.weights.size(); ++i) lo.file_weights[c.data.train[i]] = c.data.weights[i];
  return lo;
}

}  // namespace mole
