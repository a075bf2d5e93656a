// The configuration of `mole train` (run.json): one field list, read from JSON, overridable from the command
// line (--set optim.lr=1e-3), printed at start-up and saved in the run folder. Unknown keys are errors, so a
// misspelt option never silently keeps its default.
//
// {"stage": "pretrain" | "align" | "finetune", "out": "runs/x",
//  "model": {"base": DIR, "init": {llava config.json}, "projector": FILE, "tokenizer": DIR,
//            "train_projector": bool, "adapter": {adapter_config.json}, "image_processor": {preprocessor_config}},
//  "data":  {"train": FILE | [FILE...], "text_corpus": FILE, "images": DIR, "template": T, "max_len": N,
//            "batch_size": N, "workers": N, "group_by_length": bool, "strict": bool},
//  "optim": {"steps": N, "epochs": X, "lr", "projector_lr", "router_lr", "weight_decay", "warmup_ratio",
//            "min_lr_ratio", "grad_accum", "clip", "bf16": "auto" | true | false, "beta1", "beta2", "eps"},
//  "run":   {"seed", "log_every", "save_every", "keep_last", "max_bad_steps", "stop_after", "threads", "device",
//            "progress"}}
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mole {

struct TrainConfig {
  std::string stage = "finetune";  // pretrain | align | finetune
  std::string out_dir;

  // model
  std::string base;               // llava-hf folder or a mole run / checkpoint (align, finetune)
  nlohmann::json init;            // pretrain: a llava config.json object; vocab_size, image_token_index and
                                  // pad_token_id are filled in from the tokenizer
  std::string projector;          // projector weights put on the base (an align run's output)
  std::string tokenizer;          // default: the base's
  bool train_projector = true;    // finetune (LLaVA stage 2 trains it); align always, pretrain: everything
  nlohmann::json adapter;         // finetune: an adapter_config.json object (AdapterConfig)
  nlohmann::json image_processor; // preprocessor_config.json values; default: the base's, else from the config

  // data
  std::vector<std::string> train_files;
  std::string text_corpus;        // pretrain: one text-only sample per non-empty line
  std::string images;             // folder the records' image paths are relative to
  std::string conversation_template = "vicuna_v1";
  int64_t max_len = 2048;
  int64_t batch_size = 16;
  int64_t workers = 2;
  bool group_by_length = false;
  bool strict = false;

  // optimisation
  int64_t steps = 0;              // optimizer steps; 0: from epochs
  double epochs = 1.0;
  double lr = 2e-4;
  double projector_lr = 0.0;      // 0: lr
  double router_lr = 0.0;         // 0: lr
  double weight_decay = 0.0;
  double warmup_ratio = 0.03;
  double min_lr_ratio = 0.0;
  int64_t grad_accum = 1;
  double clip = 1.0;              // max gradient norm; 0: off
  std::string bf16 = "auto";      // auto: on CUDA with bf16 support, off on CPU
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;

  // run
  uint64_t seed = 0;
  int64_t log_every = 10;
  int64_t save_every = 0;         // 0: only at the end
  int64_t keep_last = 2;
  int64_t max_bad_steps = 5;      // non-finite steps in a row before the run stops
  int64_t stop_after = 0;         // stop at this step with a checkpoint (a job's time slice); the schedule still
                                  // spans optim.steps, and --resume continues; 0: run to the end
  int64_t threads = 0;            // LibTorch threads; 0: mole's default (MOLE_THREADS or every core)
  std::string device = "cpu";
  std::string progress = "auto";  // auto (a bar on a terminal) | bar | lines | off

  // Reads the object above. ConfigError names `where` and the key.
  static TrainConfig from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

// --set KEY=VALUE on the JSON before it is read: KEY is a dotted path (optim.lr, model.adapter.n_experts);
// VALUE is parsed as JSON when it is valid JSON (numbers, true, [..], {..}) and taken as a string otherwise.
void apply_override(nlohmann::json& config, const std::string& assignment);

}  // namespace mole
