// The training data loader: LLaVA records -> padded batches of ids, labels and pixel values, built ahead of the
// trainer by worker threads.
//
// Order. The batches of an epoch are a pure function of (seed, epoch, records, batch size, options): a seeded
// permutation (splitmix64 + Fisher-Yates, the same on every platform), optionally length-grouped, cut into
// batches. Each batch is built by one worker from its index list, so what a batch holds never depends on thread
// timing, and batches reach the trainer in order. Resuming mid-epoch is restarting at (epoch, batch): the
// LoaderState is what a checkpoint stores.
//
// Length grouping, as transformers' get_length_grouped_indices (trainer_pt_utils.py) which LLaVA's
// LengthGroupedSampler builds on: the permutation is cut into megabatches of 50 batches, each sorted by length
// (longest first) and cut into batches, so a batch holds samples of similar length and little padding; the batch
// order is then shuffled with the longest batch kept first, so an out-of-memory shows on the first step. Lengths
// are LLaVA's estimate (modality_lengths: words of all turns + image tokens), known without tokenizing.
//
// Bad records never end a run: a record the reader rejects (malformed JSON, invalid UTF-8, no conversations,
// <image> tags that do not match its images, ...), an image that is missing, truncated, not an image or too large,
// or a conversation the template cannot use (unknown role, no supervised token left after truncation) is left out
// of its batch and counted once by reason in skip_report(), with its record id. A batch can so come out smaller
// than batch_size; one left empty is passed over. strict: the first bad record is a DataError instead.
//
// B=batch T=longest sample in the batch I=images in the batch H,W=image size
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/types.h>

#include "data/families.h"
#include "data/image.h"
#include "data/llava_data.h"
#include "language/conversation.h"
#include "language/packing.h"
#include "language/tokenizer.h"

namespace mole {

struct LoaderOptions {
  /// Samples per batch (before bad records are left out).
  int64_t batch_size = 8;
  /// Worker threads that decode images and tokenize; 0 builds batches on the caller's thread.
  int64_t n_workers = 2;
  /// Batches built ahead of the trainer at most (the bounded queue).
  int64_t prefetch_batches = 4;
  uint64_t seed = 0;
  bool shuffle = true;
  /// transformers' group_by_length (see the file comment).
  bool group_by_length = false;
  /// Pack each batch's samples, in order, into rows of up to max_len tokens (Batch::packed_rows) instead of one
  /// padded row per sample.
  bool packing = false;
  /// Leave out the last, short batch of an epoch.
  bool drop_last = false;
  /// Data parallelism: this loader hands out batches rank, rank + world_size, rank + 2 world_size, ... of the one
  /// seeded stream of batches (over epoch ends), so the ranks' shards are disjoint and together are the stream.
  int64_t rank = 0;
  int64_t world_size = 1;
  /// Epochs to run; 0 = until the caller stops.
  int64_t n_epochs = 1;
  Template conversation_template = Template::kVicunaV1;
  /// Sequence limit after image expansion (0: none).
  int64_t max_len = 2048;
  /// Ids each <image> expands to (LlavaConfig::n_image_tokens()).
  int64_t n_image_tokens = 576;
  /// Folder the records' image paths are relative to.
  std::string image_dir;
  bool strict = false;
  /// Sampling weight of each training file (LlavaRecord::file); files not named weigh 1. An epoch holds
  /// round(w x records) samples of a file: floor(w) passes over all its records plus, for the fraction, a subset
  /// drawn afresh each epoch from (seed, epoch): exact proportions, deterministic. 0 leaves a file out.
  std::map<std::string, double> file_weights;
  /// Called with each record before it is prepared; what it throws is that sample's failure, skipped and counted
  /// like any other (tests inject failures through it). Empty: none.
  std::function<void(const LlavaRecord&)> sample_hook;
  /// Which task family each record's tokens count under in Batch::token_family (data/families.h).
  FamilySource family_source = FamilySource::kNone;
};

// Where the loader stands: the next batch it will hand out. Saved in checkpoints; n_records, batch_size and the
// rank and world size are kept to refuse resuming on different data or another sharding, where the same position
// would mean other samples.
struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t batch = 0;  // next batch within the epoch
  int64_t n_records = 0;
  int64_t batch_size = 0;
  int64_t rank = 0, world_size = 1;
  nlohmann::json to_json() const;
  static LoaderState from_json(const nlohmann::json& j);
};

struct Batch {
  int64_t epoch = 0, index = 0;         // batch `index` of `epoch`
  std::vector<std::string> ids;         // record ids, one per sample
  std::vector<int64_t> lengths;         // tokens per sample, before padding
  // One row per sample, right-padded; or, packed, rows of whole samples back to back (row count R <= B), each
  // right-padded to the longest row.
  torch::Tensor input_ids;              // (B|R, T) int64, padding pad_id
  torch::Tensor labels;                 // (B|R, T) int64, kIgnoreIndex on padding, unsupervised tokens and the
                                        // first token of each sample
  torch::Tensor attention_mask;         // (B|R, T) int64, 1 on tokens, 0 on padding
  PackedRows packed_rows;               // packed: the sample lengths of each row; empty when not packed
  torch::Tensor position_ids;           // packed: (R, T) int64, restarting at each sample; undefined when not
  torch::Tensor pixel_values;           // (I, 3, H, W) float32, images in sample order; undefined when none
  torch::Tensor token_family;           // (B|R, T) int64: each token's family (DataLoader::family_names()), -1 on
                                        // padding; undefined when the loader has no families
  int64_t n_tokens = 0;                 // sum of lengths
  int64_t n_supervised = 0;             // labels != kIgnoreIndex
  int64_t n_truncated = 0;              // samples cut to max_len
  int64_t size() const { return int64_t(ids.size()); }
};

// One record made ready for the model: the sample or why it cannot be used (a reason from the reader, the image
// decoder or the template, grouped in reports; detail has the full message naming the file). Never throws: an
// unforeseen error is the problem "sample failed: <message>".
struct PreparedSample {
  TokenizedSample tokens;
  std::vector<torch::Tensor> pixel_values;  // (3, H, W) each
  std::string problem;                      // empty when usable
  std::string detail;
};
PreparedSample prepare_sample(const LlavaRecord& record, const Tokenizer& tokenizer, const ImageProcessor& images,
                              const LoaderOptions& options);

// LLaVA's length estimate (LazySupervisedDataset.modality_lengths, without the sign): words over all turns plus
// n_image_tokens per image.
int64_t estimated_length(const LlavaRecord& record, int64_t n_image_tokens);

// The batches of one epoch, as record indices into `lengths` (whose size is the number of records). `pool`: the
// epoch's record indices, repeats allowed (epoch_pool); null: every record once.
std::vector<std::vector<int64_t>> epoch_batches(const std::vector<int64_t>& lengths, const LoaderOptions& options,
                                                uint64_t seed, int64_t epoch,
                                                const std::vector<int64_t>* pool = nullptr);

// The record indices one epoch samples when files carry weights: for each group (the indices of one file's
// records) with weight w, floor(w) copies of all of them and the first round(frac(w) x size) of a permutation
// drawn from (seed, epoch, group). Its size is the same every epoch.
std::vector<int64_t> epoch_pool(const std::vector<std::vector<int64_t>>& groups, const std::vector<double>& weights,
                                uint64_t seed, int64_t epoch);

class DataLoader {
 public:
  // The dataset's skipped records (from the reader) start the skip report. Throws DataError when it has no
  // records, ConfigError on options that cannot work, DataError when `resume` was saved on other data.
  DataLoader(std::shared_ptr<const LlavaDataset> dataset, std::shared_ptr<const Tokenizer> tokenizer,
             std::shared_ptr<const ImageProcessor> images, LoaderOptions options,
             std::optional<LoaderState> resume = std::nullopt);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next non-empty batch, nullopt after the last epoch. Rethrows a worker's DataError (strict mode) or any
  // unexpected error; a whole epoch without one usable sample is a DataError with the skip report.
  std::optional<Batch> next();

  // The position after the last batch next() returned: resuming from it continues with the batch after it.
  LoaderState state() const;
  // Bad records so far (reader and loader), each counted once.
  SkipReport skip_report() const;
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // The task families Batch::token_family indexes (empty: none) and what options().family_source resolved to.
  const RecordFamilies& families() const { return families_; }
  // Seconds next() spent waiting for a batch that was not ready (the trainer waiting on data).
  double wait_seconds() const { return wait_seconds_; }
  const LoaderOptions& options() const { return options_; }

 private:
  struct Slot {
    std::optional<Batch> batch;
    std::vector<std::pair<int64_t, std::string>> skips;  // (record index, reason)
    std::exception_ptr error;
  };
  void worker_loop();
  Slot build(int64_t global);
  std::pair<int64_t, int64_t> locate(int64_t global) const;  // -> (epoch, batch)
  std::vector<int64_t> batch_records(int64_t epoch, int64_t batch);

  std::shared_ptr<const LlavaDataset> dataset_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::shared_ptr<const ImageProcessor> images_;
  LoaderOptions options_;
  std::vector<int64_t> lengths_;
  RecordFamilies families_;
  std::vector<std::vector<int64_t>> groups_;  // with file weights: each file's record indices
  std::vector<double> group_weights_;         // their weights; both empty when every file weighs 1
  int64_t batches_per_epoch_ = 0;
  int64_t start_global_ = 0;  // batch counter where this loader started (epoch * per_epoch + batch)
  int64_t end_global_ = -1;   // one past the last batch; -1: no end

  mutable std::mutex mutex_;
  std::condition_variable work_cv_, ready_cv_;
  std::map<int64_t, std::vector<std::vector<int64_t>>> plans_;  // epoch -> batches (the last two kept)
  std::map<int64_t, Slot> ready_;
  int64_t next_to_build_ = 0;
  int64_t next_to_return_ = 0;
  bool stopping_ = false;
  std::set<int64_t> bad_records_;  // record indices known bad: passed over in later epochs
  std::set<int64_t> counted_;      // record indices in skipped_ (a record two workers found bad counts once)
  SkipReport skipped_;
  double wait_seconds_ = 0;
  std::vector<std::thread> workers_;
};

}  // namespace mole
