// `mole train`: the three LLaVA stages on one loop.
//   pretrain  every parameter of a small LLaVA, from scratch (init config) or from a base;
//   align     LLaVA stage 1: only the projector, on captions with the "plain" template;
//   finetune  LLaVA stage 2: LoRA or MoLE adapters on the frozen language model (and wherever the adapter config
//             puts them), the projector trainable or frozen.
// The loop reads top to bottom: config -> model -> data -> optimizer -> (resume) -> loop { batches of one step,
// forward, loss + balance losses, backward, non-finite check, clip, AdamW step, log; checkpoint } -> final.
// Reference: LLaVA llava/train/train.py and scripts/v1_5/{pretrain,finetune_lora}.sh for the recipe;
// HF Trainer for the step / accumulation / schedule semantics.
#pragma once

#include <string>

#include "pipelines/train_config.h"

namespace mole {

struct TrainResult {
  int64_t steps = 0;          // optimizer steps done in total (including before a resume)
  double last_loss = 0.0;     // mean loss of the last logging window
  std::string final_dir;      // RUN/final, or the checkpoint written on interruption
  bool interrupted = false;   // Ctrl-C: a checkpoint was written and the run stopped early
  bool stopped = false;       // run.stop_after (or Ctrl-C): stopped before the last step, with a checkpoint
};

// Runs (or with `resume`, continues from RUN/checkpoints/latest) the training the config describes. Writes
// RUN/run.json, RUN/metrics.jsonl, checkpoints and RUN/final. Throws on bad configs, on data that is unusable as
// a whole, and when non-finite steps keep coming (TrainingError).
TrainResult run_training(const TrainConfig& config, bool resume);

struct TrainingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace mole
