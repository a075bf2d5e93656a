#include "pipelines/train_files.h"

#include <ATen/CPUGeneratorImpl.h>
#include <filesystem>

#include <torch/torch.h>

#include "core/json_config.h"
#include "core/safetensors.h"
#include "model/adapters.h"
#include "model/llava_loader.h"

namespace mole {

namespace fs = std::filesystem;

json TrainerState::to_json() const {
  return {{"step", step},
          {"total_steps", total_steps},
          {"loader", loader.to_json()},
          {"bad_streak", bad_streak},
          {"skipped_records", skipped.to_json()}};
}

void write_model_files(const std::string& dir, const ModelSpec& spec, const NamedTensors& trainable) {
  write_json_file(dir + "/model.json", spec.to_json());
  save_safetensors(dir + "/trainable.safetensors", trainable);
}

void write_checkpoint_files(const std::string& dir, const ModelSpec& spec, const NamedTensors& trainable,
                            const AdamW& optimizer, const TrainerState& state) {
  write_model_files(dir, spec, trainable);
  save_safetensors(dir + "/optimizer.safetensors", optimizer.state_tensors());
  save_safetensors(dir + "/rng.safetensors", {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}});
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

void restore_rng(const std::string& dir) {
  TensorStore rng(dir + "/rng.safetensors");
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle on the shared generator
  generator.set_state(rng.tensor("cpu"));
}

std::string write_final(const TrainConfig& c, const ModelSpec& spec, const TrainedModel& built, Llava& model,
                        const NamedTensors& trainable) {
  const std::string final_dir = c.out_dir + "/final";
  const std::string tmp = c.out_dir + "/.final.tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_model_files(tmp, spec, trainable);
  write_json_file(tmp + "/preprocessor_config.json", built.image_config.to_json());
  if (c.stage == Stage::kPretrain) {
    // a whole llava-hf folder: transformers and `mole train` (as a base) read it as it is
    save_llava(tmp, model);
    for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
      if (fs::exists(spec.tokenizer + "/" + f)) fs::copy_file(spec.tokenizer + "/" + f, tmp + "/" + f);
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
    if (adapter.kind == AdapterKind::kLora) save_peft_adapter(tmp + "/adapter_peft", model, adapter);
  }
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  return final_dir;
}

}  // namespace mole
