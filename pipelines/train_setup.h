// What `mole train` builds before its loop: the model spec a config describes, which parameters the stage
// trains, the training records and the loader options. (The loop itself: pipelines/trainer.cpp.)
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "data/llava_data.h"
#include "data/loader.h"
#include "model/trained_model.h"
#include "pipelines/train_config.h"

namespace mole {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The spec of the model the run starts from: paths made absolute; for a model trained from scratch the
// tokenizer's vocabulary and special ids put into the init config; for one built from parts the tokenizer's
// <image> required and model.vision_tower checked against the base (an original LLaVA base needs it, a llava-hf
// one refuses it); for finetune the adapter config with the base's name and config hash.
ModelSpec spec_for(const TrainConfig& config);

// What the stage trains, by full name, with requires_grad set on them and cleared elsewhere:
// pretrain everything; align the projector; finetune the adapters (and the projector with train_projector).
NamedTensors select_trainable(Llava& model, const TrainConfig& config);
int64_t count_elements(const NamedTensors& params);

// The records of every data.train file, in order, then each non-empty line of data.text_corpus as a text-only
// sample; bad records of the files are skipped and counted (or an error with data.strict).
std::shared_ptr<const LlavaDataset> read_training_data(const TrainConfig& config);

// The loader for this run: the step count decides the end (no epoch limit).
LoaderOptions loader_options(const TrainConfig& config, const Llava& model);

}  // namespace mole
