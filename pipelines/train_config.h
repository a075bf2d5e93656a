// The configuration of `mole train` (run.json): one field list per section (core/fields.h), read from JSON,
// overridable from the command line (--set optim.lr=1e-3), printed whole by --print-config (every resolved
// value, defaults included), documented by `mole train --help`, and saved in the run folder. An unknown key at
// any depth is an error naming the dotted key and the nearest known one, so a misspelt option never silently
// keeps its default.
//
// {"stage": "pretrain" | "align" | "finetune", "out": "runs/x",
//  "model": {...}, "data": {...}, "optim": {...}, "run": {...}}   (the sections below)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "core/limits.h"
#include "data/families.h"
#include "language/conversation.h"
#include "model/adapters.h"
#include "model/checkpointing.h"

namespace mole {

enum class Stage { kPretrain, kAlign, kFinetune };
enum class Bf16Mode { kAuto, kOn, kOff };                 // JSON: "auto", true / "true", false / "false"
enum class ProgressMode { kAuto, kBar, kLines, kOff };
template <>
const EnumTable<Stage>& enum_table<Stage>();
template <>
const EnumTable<Bf16Mode>& enum_table<Bf16Mode>();
template <>
const EnumTable<ProgressMode>& enum_table<ProgressMode>();

struct ModelSection {
  std::string base;                      // llava-hf or original LLaVA folder, or a mole run / checkpoint
  nlohmann::json init;                   // pretrain from scratch: a llava config.json object
  std::string vision_tower;              // from parts: a CLIP folder (also the tower of an original LLaVA base)
  std::string language_model;            // from parts: a LlamaForCausalLM / MistralForCausalLM folder
  nlohmann::json projector_config;       // from parts: the new projector's llava config keys
  std::string projector;                 // projector weights put on the base (an align run's output)
  std::string tokenizer;                 // default: the base's, or the language model's
  bool train_projector = true;
  std::optional<AdapterConfig> adapter;  // finetune
  nlohmann::json image_processor;        // preprocessor_config.json values
  std::string dtype = "float32";         // the frozen parameters' dtype: float32 | bfloat16

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("base", self.base, "llava-hf folder, or a mole run or checkpoint, to start from (align, finetune); or an "
                         "original LLaVA folder (liuhaotian/llava-v1.5-*) with model.vision_tower");
    v("init", self.init, "pretrain from scratch: a llava config.json object (vocab_size, image_token_index and "
                         "pad_token_id come from the tokenizer)");
    v("vision_tower", self.vision_tower, "a CLIP folder (CLIPVisionModel or CLIPModel): with model.language_model "
                                         "the LLaVA is built from parts; with an original LLaVA model.base, the "
                                         "tower its mm_vision_tower names");
    v("language_model", self.language_model, "a LlamaForCausalLM / MistralForCausalLM folder: the LLaVA is built "
                                             "from it, model.vision_tower and a new projector (instead of base)");
    v("projector_config", self.projector_config,
      "from parts: the new projector, by llava config.json keys: mm_projector_type (mlp2x_gelu | linear), "
      "multimodal_projector_bias, projector_hidden_act, vision_feature_layer, vision_feature_select_strategy, "
      "image_token_index (default: the tokenizer's <image>)");
    v("projector", self.projector, "projector weights to put on the base (an align run's projector.safetensors)");
    v("tokenizer", self.tokenizer, "tokenizer folder (default: the base's, or the language model's)");
    v("train_projector", self.train_projector, "finetune: train the projector too (LLaVA stage 2 does)");
    v("adapter", self.adapter, "finetune: the adapter config (adapter_config.json's fields)");
    v("image_processor", self.image_processor, "preprocessor_config.json values (default: the base's)");
    v("dtype", self.dtype, "dtype the frozen parameters are held in: float32, or bfloat16 (half the memory; needs "
                           "optim.bf16 on); adapters, routers, whatever trains and the optimizer stay float32");
  }
};

struct DataSection {
  std::vector<std::string> train;        // LLaVA JSON / JSON Lines files, in order
  std::vector<double> weights;           // sampling weight of each train file (empty: 1 each)
  std::string eval;                      // a held-out LLaVA file: its loss every run.eval_every steps
  std::string text_corpus;               // pretrain: one text-only sample per non-empty line
  std::string images;                    // folder the records' image paths are relative to
  Template conversation_template = Template::kVicunaV1;  // from_json: vicuna_v1 for finetune, else plain
  int64_t max_len = 2048;
  int64_t batch_size = 16;
  int64_t workers = 2;
  bool group_by_length = false;
  bool packing = true;
  bool strict = false;
  FamilySource families = FamilySource::kAuto;

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("train", self.train, "LLaVA JSON or JSON Lines training files (a string or a list)");
    v("weights", self.weights, "sampling weight of each train file, in order: an epoch holds round(w x records) of "
                               "a file (2: each record twice, 0.5: a fresh half each epoch; default 1 each)", at_least(0));
    v("eval", self.eval, "a held-out LLaVA file whose loss is measured every run.eval_every steps (metrics.jsonl "
                         "\"eval_loss\" lines)");
    v("text_corpus", self.text_corpus, "pretrain: a text file, one text-only sample per non-empty line");
    v("images", self.images, "folder the records' image paths are relative to");
    v("template", self.conversation_template, "conversation template (default: vicuna_v1 for finetune, plain "
                                              "otherwise)");
    v("max_len", self.max_len, "tokens per sample at most (images are never cut)", between(1, kMaxSequence));
    v("batch_size", self.batch_size, "samples per micro-batch", between(1, kMaxBatch));
    v("workers", self.workers, "loader threads building batches ahead of the trainer", between(0, kMaxWorkers));
    v("group_by_length", self.group_by_length, "batches of similar length (transformers' megabatches of 50)");
    v("packing", self.packing,
      "a batch's samples packed into rows of up to max_len, no padding between them (the same loss and gradients)");
    v("strict", self.strict, "a bad record is an error instead of a counted skip");
    v("families", self.families, "task families for the routing-by-family statistics of MoLE runs: auto (the "
                                 "records' category, else the training file when several, else the images' top "
                                 "folder when several), category, file, image_folder, none");
  }
};

struct OptimSection {
  int64_t steps = 0;                     // optimizer steps; 0: from epochs
  double epochs = 1.0;
  double lr = 2e-4;
  double projector_lr = 0.0;             // 0: lr
  double router_lr = 0.0;                // 0: lr
  double weight_decay = 0.0;
  double warmup_ratio = 0.03;
  double min_lr_ratio = 0.0;
  int64_t grad_accum = 1;
  double clip = 1.0;                     // max gradient norm; 0: off
  Bf16Mode bf16 = Bf16Mode::kAuto;       // auto: on CUDA, off on CPU
  ActivationCheckpointing activation_checkpointing = ActivationCheckpointing::kNone;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("steps", self.steps, "optimizer steps (0: from epochs)", between(0, kMaxCount));
    v("epochs", self.epochs, "passes over the data when steps is 0", Bounds{0, 1e6, true});
    v("lr", self.lr, "peak learning rate (AdamW, cosine schedule)", Bounds{0, 10, true});
    v("projector_lr", self.projector_lr, "learning rate of the projector (0: lr)", between(0, 10));
    v("router_lr", self.router_lr, "learning rate of the MoLE routers (0: lr)", between(0, 10));
    v("weight_decay", self.weight_decay, "decoupled weight decay, on matrices only", between(0, 10));
    v("warmup_ratio", self.warmup_ratio, "share of the steps with a linear warm-up", between(0, 1));
    v("min_lr_ratio", self.min_lr_ratio, "the cosine ends at lr * min_lr_ratio", between(0, 1));
    v("grad_accum", self.grad_accum, "micro-batches per optimizer step", between(1, kMaxBatch));
    v("clip", self.clip, "max gradient norm (0: no clipping)", between(0, 1e9));
    v("bf16", self.bf16, "bfloat16 autocast (auto: on CUDA, off on CPU)");
    v("activation_checkpointing", self.activation_checkpointing,
      "recompute layers in backward instead of keeping their activations: none | decoder | all (+ vision)");
    v("beta1", self.beta1, "AdamW beta1", unit_open_above());
    v("beta2", self.beta2, "AdamW beta2", unit_open_above());
    v("eps", self.eps, "AdamW epsilon", Bounds{0, 1, true});
  }
};

struct RunSection {
  uint64_t seed = 0;
  int64_t log_every = 10;
  int64_t eval_every = 0;
  int64_t save_every = 0;                // 0: only at the end
  int64_t keep_last = 2;
  int64_t max_bad_steps = 5;
  int64_t stop_after = 0;                // 0: run to the end
  int64_t threads = 0;                   // 0: mole's default (MOLE_THREADS or every core)
  std::string device = "cpu";
  ProgressMode progress = ProgressMode::kAuto;
  int64_t profile_step = 0;              // 0: off

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("seed", self.seed, "seed of the initialisation, dropout, routing noise and data order", between(0, 1.8446744073709552e19));
    v("log_every", self.log_every, "steps per metrics line", between(1, kMaxCount));
    v("eval_every", self.eval_every, "steps between measurements of the data.eval loss (0: with data.eval, only at "
                                     "the end)", between(0, kMaxCount));
    v("save_every", self.save_every, "steps between checkpoints (0: only at the end)", between(0, kMaxCount));
    v("keep_last", self.keep_last, "checkpoints kept", between(1, 1000000));
    v("max_bad_steps", self.max_bad_steps, "non-finite steps in a row before the run stops", between(1, kMaxCount));
    v("stop_after", self.stop_after, "stop at this step with a checkpoint, to --resume later (0: run to the end)", between(0, kMaxCount));
    v("threads", self.threads, "LibTorch threads (0: MOLE_THREADS or every core)", between(0, kMaxThreads));
    v("device", self.device, "cpu or cuda[:N]");
    v("progress", self.progress, "a progress bar (auto: on a terminal), log lines, or nothing");
    v("profile_step", self.profile_step,
      "write OUT/profile_step_N.json, a chrome trace of the ops of step N's forward and backward (bench/trace_ops.py "
      "sums it per op; 0: off)", between(0, kMaxCount));
  }
};

struct TrainConfig {
  Stage stage = Stage::kFinetune;
  std::string out_dir;
  ModelSection model;
  DataSection data;
  OptimSection optim;
  RunSection run;

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("stage", self.stage, "pretrain (every parameter), align (the projector, LLaVA stage 1) or finetune "
                           "(adapters, LLaVA stage 2)");
    v("out", self.out_dir, "the run folder (required)");
    v("model", self.model, "what to train");
    v("data", self.data, "what to train on");
    v("optim", self.optim, "how to optimise");
    v("run", self.run, "seed, logging, checkpoints, threads, device");
  }
  // Cross-field rules and ranges; errors name the file and the dotted key.
  void validate(const FieldPath& at) const;

  // Reads run.json's object: defaults where keys are absent, the stage's template default filled in.
  static TrainConfig from_json(const nlohmann::json& j, const std::string& file);
  nlohmann::json to_json() const { return write_fields(*this); }
};

// Every field of run.json with its type, default and meaning (for `mole train --help`).
std::string train_config_help();

// --set KEY=VALUE on the JSON before it is read: KEY is a dotted path (optim.lr, model.adapter.n_experts);
// VALUE is parsed as JSON when it is valid JSON (numbers, true, [..], {..}) and taken as a string otherwise.
void apply_override(nlohmann::json& config, const std::string& assignment);

}  // namespace mole
