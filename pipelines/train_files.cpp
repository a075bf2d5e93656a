#include "pipelines/train_files.h"

#include <ATen/CPUGeneratorImpl.h>
#include <filesystem>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/adapters.h"
#include "model/llava_export.h"
#include "model/llava_loader.h"

namespace mole {

namespace fs = std::filesystem;

json TrainerState::to_json() const {
  json j = {{"step", step},
            {"total_steps", total_steps},
            {"loader", loader.to_json()},
            {"bad_streak", bad_streak},
            {"skipped_records", skipped.to_json()},
            {"world_size", world_size}};
  if (!rank_loaders.empty()) {
    j["rank_loaders"] = json::array();
    for (const LoaderState& l : rank_loaders) j["rank_loaders"].push_back(l.to_json());
  }
  return j;
}

namespace {
std::string rng_key(int64_t rank) { return rank == 0 ? "cpu" : "cpu_rank" + std::to_string(rank); }
}  // namespace

void write_model_files(const std::string& dir, const ModelSpec& spec, const NamedTensors& trainable) {
  write_json_file(dir + "/model.json", spec.to_json());
  save_safetensors(dir + "/trainable.safetensors", trainable);
}

void write_checkpoint_files(const std::string& dir, const ModelSpec& spec, const NamedTensors& trainable,
                            const AdamW& optimizer, const TrainerState& state) {
  write_model_files(dir, spec, trainable);
  save_safetensors(dir + "/optimizer.safetensors", optimizer.state_tensors());
  NamedTensors rng = {{rng_key(0), at::detail::getDefaultCPUGenerator().get_state()}};
  for (size_t r = 0; r < state.rank_rng.size(); ++r) rng.emplace_back(rng_key(int64_t(r) + 1), state.rank_rng[r]);
  save_safetensors(dir + "/rng.safetensors", rng);
  write_json_file(dir + "/trainer_state.json", state.to_json());
}

json restore_checkpoint(const std::string& dir, const NamedTensors& trainable, AdamW& optimizer) {
  json state = read_json_file(dir + "/trainer_state.json");
  TensorStore weights(dir + "/trainable.safetensors");
  {
    torch::NoGradGuard no_grad;
    for (const auto& [name, p] : trainable) {
      if (!weights.contains(name)) throw FormatError(weights.path() + ": no tensor " + name);
      p.detach().copy_(weights.tensor(name, p.scalar_type()));
    }
  }
  optimizer.load_state(TensorStore(dir + "/optimizer.safetensors"));
  return state;
}

void restore_rng(const std::string& dir, int64_t rank) {
  TensorStore rng(dir + "/rng.safetensors");
  if (!rng.contains(rng_key(rank))) throw FormatError(rng.path() + ": no generator state " + rng_key(rank));
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle on the shared generator
  generator.set_state(rng.tensor(rng_key(rank)));
}

std::string write_final(const TrainConfig& c, const ModelSpec& spec, const TrainedModel& built, Llava& model,
                        const NamedTensors& trainable) {
  const std::string final_dir = c.out_dir + "/final";
  const std::string tmp = c.out_dir + "/.final.tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_model_files(tmp, spec, trainable);
  write_json_file(tmp + "/preprocessor_config.json", built.image_config.to_json());
  // Built from parts (CLIP + LLaMA folders, or an original LLaVA one), an aligned model has no llava-hf folder
  // to go back to: final/ becomes one, the trained projector in it.
  const bool from_parts = !spec.vision_tower.empty();
  if (c.stage == Stage::kPretrain || (c.stage == Stage::kAlign && from_parts)) {
    // a whole llava-hf folder: transformers and `mole train` (as a base) read it as it is
    save_llava(tmp, model);
    // the tokenizer as the model was built with it (<image> and <pad> added to a stock one), and what
    // LlavaProcessor.from_pretrained needs beside it: processor_config.json, chat_template.jinja, tokenizer.json
    write_processor_files(tmp, model->config, built.image_config, c.data.conversation_template, *built.tokenizer);
  }
  if (c.stage == Stage::kAlign || (c.stage == Stage::kFinetune && c.model.train_projector)) {
    NamedTensors projector;
    for (const auto& [name, p] : trainable)
      if (name.rfind("multi_modal_projector.", 0) == 0) projector.emplace_back(name, p);
    save_safetensors(tmp + "/projector.safetensors", projector);
  }
  if (c.stage == Stage::kFinetune) {
    AdapterConfig adapter = AdapterConfig::from_json(spec.adapter, "model.json adapter");
    save_adapter(tmp + "/adapter", model, adapter);
    // the PEFT form carries the finetuned projector too (modules_to_save), so PEFT answers as mole does
    if (adapter.kind == AdapterKind::kLora)
      save_peft_adapter(tmp + "/adapter_peft", model, adapter, c.model.train_projector);
  }
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  return final_dir;
}

}  // namespace mole
