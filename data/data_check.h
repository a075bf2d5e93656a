// What a training run would find in a dataset, found by running the training data loader over it once, without a
// model: records, usable samples, images, token counts, truncation and the skipped records by reason. `mole
// check-data` prints it; because it is the trainer's own loader (prepare_sample, the same skips), a dataset
// check-data calls usable trains, and its skip report is the one the run would log.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "data/loader.h"

namespace mole {

struct DataCheck {
  int64_t records = 0;          // records in the files
  int64_t usable_samples = 0;   // samples a training epoch would train on
  int64_t images = 0;           // their images
  int64_t tokens = 0, supervised = 0, truncated = 0;
  int64_t tokens_max = 0;
  std::string longest_record;
  SkipReport skipped;           // reader and loader, each record once
  double seconds = 0;
  nlohmann::json to_json() const;
};

// One epoch in file order (options.shuffle and n_epochs are overridden; batch size and workers are kept).
DataCheck check_dataset(std::shared_ptr<const LlavaDataset> dataset, std::shared_ptr<const Tokenizer> tokenizer,
                        std::shared_ptr<const ImageProcessor> images, LoaderOptions options);

}  // namespace mole
