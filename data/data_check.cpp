#include "data/data_check.h"

#include <chrono>

namespace mole {

nlohmann::json DataCheck::to_json() const {
  const double n = double(usable_samples);
  return {{"records", records},
          {"usable_samples", usable_samples},
          {"images", images},
          {"tokens_mean", usable_samples ? double(tokens) / n : 0.0},
          {"tokens_max", tokens_max},
          {"longest_record", longest_record},
          {"supervised_tokens_mean", usable_samples ? double(supervised) / n : 0.0},
          {"truncated", truncated},
          {"skipped", skipped.to_json()},
          {"seconds", seconds}};
}

DataCheck check_dataset(std::shared_ptr<const LlavaDataset> dataset, std::shared_ptr<const Tokenizer> tokenizer,
                        std::shared_ptr<const ImageProcessor> images, LoaderOptions options) {
  const auto start = std::chrono::steady_clock::now();
  options.shuffle = false;
  options.n_epochs = 1;
  DataCheck check;
  check.records = dataset->n_read;
  DataLoader loader(dataset, std::move(tokenizer), std::move(images), options);
  while (auto batch = loader.next()) {
    check.usable_samples += batch->size();
    check.images += batch->pixel_values.defined() ? batch->pixel_values.size(0) : 0;
    check.tokens += batch->n_tokens;
    check.supervised += batch->n_supervised;
    check.truncated += batch->n_truncated;
    for (int64_t i = 0; i < batch->size(); ++i)
      if (batch->lengths[size_t(i)] > check.tokens_max) {
        check.tokens_max = batch->lengths[size_t(i)];
        check.longest_record = batch->ids[size_t(i)];
      }
  }
  check.skipped = loader.skip_report();
  check.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return check;
}

}  // namespace mole
