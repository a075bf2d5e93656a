// `mole train`: the three LLaVA stages on one loop.
//   pretrain  every parameter of a small LLaVA, from scratch (init config) or from a base;
//   align     LLaVA stage 1: only the projector, on captions with the "plain" template;
//   finetune  LLaVA stage 2: LoRA or MoLE adapters on the frozen language model (and wherever the adapter config
//             puts them), the projector trainable or frozen.
// run_training reads top to bottom (llm.c's main): set-up (model, data, optimizer, resume), then
//   for step: stats = train_step(next batches); skip if not finite; clip, AdamW; window.add(stats);
//             maybe log; hooks (evaluation); maybe checkpoint
// then the final folder. A TrainingGuard owns what the run changes in the process (the SIGINT handler, autocast,
// the routing sinks) and restores it on every exit, a thrown error included.
// Under torchrun (dist/launch.h) every rank runs this loop on its shard of the batches; gradients are averaged in
// train_step, the step's numbers pooled after it, and rank 0 alone writes the log, checkpoints and final/.
// Reference: LLaVA llava/train/train.py and scripts/v1_5/{pretrain,finetune_lora}.sh for the recipe;
// HF Trainer for the step / accumulation / schedule semantics.
#pragma once

#include <cmath>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/loader.h"
#include "dist/process_group.h"
#include "model/llava.h"
#include "moe/routing_context.h"
#include "pipelines/metrics_window.h"
#include "pipelines/optim.h"
#include "pipelines/train_config.h"

namespace mole {

struct TrainResult {
  int64_t steps = 0;          // optimizer steps done in total (including before a resume)
  double last_loss = 0.0;     // loss of the last optimizer step
  double mean_loss = 0.0;     // mean loss of the last run.log_every steps (the last window), what the summary shows
  bool already_finished = false;  // resume of a finished run: nothing was done
  double eval_loss = std::nan("");  // the last data.eval loss measured (NaN: none)
  std::string final_dir;      // RUN/final, or the checkpoint written on interruption
  bool interrupted = false;   // Ctrl-C: a checkpoint was written and the run stopped early
  bool stopped = false;       // run.stop_after (or Ctrl-C): stopped before the last step, with a checkpoint
  SkipReport skipped;         // records left out, all ranks (also in metrics.jsonl's last event)
};

// Ways for a caller to take part in a run (tests, and evaluation during training), instead of environment
// variables read in the loop.
struct TrainHooks {
  // After every optimizer step that was taken, with the model in train mode: the place for periodic
  // evaluation. It may throw (the run ends, the guard restores the process state).
  std::function<void(int64_t step, Llava& model)> after_step;
  // Inside each checkpoint write, after its files are written and before the folder is renamed into place.
  std::function<void(const std::string& dir)> checkpoint_filled;
  // Before each record is made into a sample (LoaderOptions::sample_hook): what it throws is that record's
  // failure, skipped and counted (tests inject unforeseen failures through it).
  std::function<void(const LlavaRecord& record)> sample_hook;
};

// What may happen to a run folder that already holds a run (mole train's flags).
struct RunFolderRules {
  // Without resume: a folder holding a run (run.json, metrics.jsonl, checkpoints/ or final/) is an error, unless
  // overwrite, which removes those four first (nothing else in the folder).
  bool overwrite = false;
  // With resume: a config that differs from the saved run.json in anything that decides what the run computes
  // (every field but those in resumable_config_changes()) is an error, unless this is set.
  bool allow_config_change = false;
};

// The dotted config fields a resume may change without breaking exactness: where files go, logging, checkpoint
// cadence, threads, device and loader threads.
const std::vector<std::string>& resumable_config_changes();

// Dotted keys whose values differ between two configs (TrainConfig::to_json), "key: old -> new" each, leaving
// out resumable_config_changes().
std::vector<std::string> config_changes(const nlohmann::json& saved, const nlohmann::json& now);

// Runs (or with `resume`, continues from RUN/checkpoints/latest) the training the config describes. Writes
// RUN/run.json, RUN/metrics.jsonl, checkpoints and RUN/final. Resuming a run that finished (RUN/final exists and
// the step count is unchanged) says so and changes nothing. Throws on bad configs, on a folder the rules refuse,
// on data that is unusable as a whole, and when non-finite steps keep coming (TrainingError).
TrainResult run_training(const TrainConfig& config, bool resume, const TrainHooks& hooks = {},
                         const RunFolderRules& rules = {});

// One optimizer step's forward and backward: grad_accum batches from the loader, each batch's mean loss (next-
// token cross-entropy, -100 ignored, plus the weighted balance losses the MoLE layers report into `losses`)
// weighing 1/grad_accum, as the HF Trainer; gradients are left on the parameters, averaged over the ranks of
// `group` when there is one (dist/data_parallel.h), and their norm measured. The stats are this rank's.
// `families`: told each batch's token families (Batch::token_family) before its forward, when both exist.
StepStats train_step(Llava& model, DataLoader& loader, const AdamW& optimizer, int64_t grad_accum,
                     const torch::Device& device, LayerLosses& losses, ProcessGroup* group = nullptr,
                     FamilyRouting* families = nullptr);

// The mean next-token loss over a whole held-out set (data.eval): the model in eval mode, no gradients, no routing
// statistics; under data parallelism each rank takes its shard and the sums are pooled.
struct EvalLoss {
  double loss = 0.0;     // over every target token (NaN when there is none)
  int64_t targets = 0;   // supervised tokens scored
  int64_t skipped = 0;   // records of the set left out (this rank)
};
EvalLoss evaluate_loss(Llava& model, std::shared_ptr<const LlavaDataset> data, std::shared_ptr<const Tokenizer> tokenizer,
                       std::shared_ptr<const ImageProcessor> images, LoaderOptions options, const torch::Device& device,
                       ProcessGroup* group = nullptr);

struct TrainingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace mole
