// What a training run writes besides its log: the contents of each checkpoint (pipelines/checkpoint.h makes the
// folder atomic), reading one back for --resume, and the final folder with its user-facing forms.
//   checkpoints/step-N/: model.json + trainable.safetensors (what load_trained reads), optimizer.safetensors,
//                        rng.safetensors (the CPU generator), trainer_state.json (step, total steps, loader
//                        position, bad-step streak, skipped records)
//   final/:              model.json + trainable.safetensors + preprocessor_config.json, and for pretrain (and
//                        align from parts) a whole llava-hf folder, for align and a projector-training finetune
//                        projector.safetensors, for
//                        finetune adapter/ (mole's format) and for plain LoRA adapter_peft/ (PEFT's)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "model/trained_model.h"
#include "pipelines/optim.h"
#include "pipelines/train_config.h"
#include "pipelines/train_setup.h"

namespace mole {

// The trainer's counters a checkpoint keeps beside the weights.
struct TrainerState {
  int64_t step = 0;          // optimizer steps done
  int64_t total_steps = 0;
  int64_t bad_streak = 0;    // non-finite steps in a row
  LoaderState loader;        // the position after the last batch used (rank 0's)
  SkipReport skipped;        // bad records so far, all ranks (informative; the loaders recount on resume)
  // Data parallel: the number of processes, each rank's loader position (rank 0's included) and the CPU
  // generator of ranks 1.. (rank 0's is this process's), so that each rank resumes where it stood.
  int64_t world_size = 1;
  std::vector<LoaderState> rank_loaders;
  std::vector<torch::Tensor> rank_rng;

  nlohmann::json to_json() const;
};

// model.json + trainable.safetensors: a model load_trained can rebuild.
void write_model_files(const std::string& dir, const ModelSpec& spec, const NamedTensors& trainable);
// The whole checkpoint: model files, optimizer state, the CPU generator and the trainer state.
void write_checkpoint_files(const std::string& dir, const ModelSpec& spec, const NamedTensors& trainable,
                            const AdamW& optimizer, const TrainerState& state);

// Puts a checkpoint's trained weights and optimizer state back; returns its trainer_state.json. A tensor missing
// from the checkpoint is a FormatError naming the file and the tensor.
nlohmann::json restore_checkpoint(const std::string& dir, const NamedTensors& trainable, AdamW& optimizer);
// Puts the CPU generator back as the checkpoint saved it for `rank`: the last thing before the loop, so that
// nothing else draws from it in between.
void restore_rng(const std::string& dir, int64_t rank = 0);

// RUN/final, written into a hidden folder and renamed into place. Returns its path.
std::string write_final(const TrainConfig& config, const ModelSpec& spec, const TrainedModel& built,
                        Llava& model, const NamedTensors& trainable);

}  // namespace mole
