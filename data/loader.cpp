#include "data/loader.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <sstream>

#include <torch/torch.h>

#include "core/json_config.h"

namespace mole {

// ---- state ----------------------------------------------------------------------------------------------------

nlohmann::json LoaderState::to_json() const {
  return {{"seed", seed},           {"epoch", epoch}, {"batch", batch},          {"n_records", n_records},
          {"batch_size", batch_size}, {"rank", rank},   {"world_size", world_size}};
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  LoaderState s;
  try {
    s.seed = j.at("seed").get<uint64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.batch = j.at("batch").get<int64_t>();
    s.n_records = j.at("n_records").get<int64_t>();
    s.batch_size = j.at("batch_size").get<int64_t>();
    s.rank = j.value("rank", int64_t(0));  // checkpoints of one process from before data parallelism have neither
    s.world_size = j.value("world_size", int64_t(1));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(std::string("data loader state: ") + e.what());
  }
  return s;
}

// ---- one sample -----------------------------------------------------------------------------------------------

namespace {

PreparedSample prepare_known(const LlavaRecord& record, const Tokenizer& tokenizer, const ImageProcessor& images,
                             const LoaderOptions& options) {
  PreparedSample sample;
  if (options.sample_hook) options.sample_hook(record);
  sample.tokens = tokenize_conversation(record.turns, tokenizer, options.conversation_template,
                                        options.n_image_tokens, options.max_len);
  if (!sample.tokens.problem.empty()) {
    sample.problem = sample.tokens.problem;
    sample.detail = sample.tokens.problem;
    return sample;
  }
  // The model fills image ids with the batch's image features in order: they must be whole blocks, one per image.
  const int64_t image_ids = std::count(sample.tokens.input_ids.begin(), sample.tokens.input_ids.end(),
                                       tokenizer.image_token_id());
  if (image_ids != int64_t(record.images.size()) * options.n_image_tokens) {
    sample.problem = "image tokens do not match images";
    sample.detail = sample.problem + ": " + std::to_string(image_ids) + " ids for " +
                    std::to_string(record.images.size()) + " images of " + std::to_string(options.n_image_tokens);
    return sample;
  }
  for (const std::string& relative : record.images) {
    const bool absolute = !relative.empty() && relative[0] == '/';  // os.path.join(folder, "/abs") is "/abs"
    const std::string path = options.image_dir.empty() || absolute ? relative : options.image_dir + "/" + relative;
    try {
      sample.pixel_values.push_back(images.load(path));  // (3, H, W)
    } catch (const ImageError& e) {
      sample.problem = e.reason();
      sample.detail = e.what();
      sample.pixel_values.clear();
      return sample;
    }
  }
  return sample;
}

}  // namespace

PreparedSample prepare_sample(const LlavaRecord& record, const Tokenizer& tokenizer, const ImageProcessor& images,
                              const LoaderOptions& options) {
  try {
    return prepare_known(record, tokenizer, images, options);
  } catch (const TokenizerError&) {
    throw;  // a tokenizer without an <image> token: the run's set-up is wrong, not this record
  } catch (const std::exception& e) {
    // Whatever else goes wrong with one record (a library error on odd content, an allocation that fails) costs
    // that record only. The reason groups by the kind of failure; the detail keeps the message.
    PreparedSample failed;
    failed.problem = "sample failed: " + std::string(e.what()).substr(0, 80);
    failed.detail = e.what();
    return failed;
  }
}

int64_t estimated_length(const LlavaRecord& record, int64_t n_image_tokens) {
  int64_t words = 0;
  for (const Turn& turn : record.turns) {
    std::istringstream in(turn.text);
    std::string word;
    while (in >> word) ++words;
  }
  return words + n_image_tokens * int64_t(record.images.size());
}

// ---- order ----------------------------------------------------------------------------------------------------

namespace {

// splitmix64 (Steele, Lea, Flood 2014): a small generator whose output is the same everywhere, unlike
// std::shuffle and the standard distributions, whose algorithms the library chooses.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) {  // uniform in [0, n), by rejection
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next(); while (x >= limit);
    return x % n;
  }
  template <typename T>
  void shuffle(std::vector<T>& v) {  // Fisher-Yates
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

constexpr int64_t kMegabatchMultiplier = 50;  // transformers' get_length_grouped_indices(mega_batch_mult=50)

}  // namespace

std::vector<int64_t> epoch_pool(const std::vector<std::vector<int64_t>>& groups, const std::vector<double>& weights,
                                uint64_t seed, int64_t epoch) {
  std::vector<int64_t> pool;
  for (size_t g = 0; g < groups.size(); ++g) {
    const double whole = std::floor(weights[g]);
    for (int64_t k = 0; k < int64_t(whole); ++k) pool.insert(pool.end(), groups[g].begin(), groups[g].end());
    const auto part = size_t(std::llround((weights[g] - whole) * double(groups[g].size())));
    if (part == 0) continue;
    std::vector<int64_t> drawn = groups[g];
    SplitMix64 rng{seed * 0x2545F4914F6CDD1Dull + uint64_t(epoch) * 0x9E3779B97F4A7C15ull + g * 0xD1B54A32D192ED03ull + 7};
    rng.shuffle(drawn);
    pool.insert(pool.end(), drawn.begin(), drawn.begin() + std::ptrdiff_t(part));
  }
  return pool;
}

std::vector<std::vector<int64_t>> epoch_batches(const std::vector<int64_t>& lengths, const LoaderOptions& options,
                                                uint64_t seed, int64_t epoch, const std::vector<int64_t>* pool) {
  std::vector<int64_t> order(lengths.size());
  if (pool) order = *pool;
  else std::iota(order.begin(), order.end(), 0);
  const int64_t n = int64_t(order.size()), b = options.batch_size;
  SplitMix64 rng{seed * 0x100000001B3ull + uint64_t(epoch) * 0x9E3779B97F4A7C15ull + 1};
  if (options.shuffle) rng.shuffle(order);

  std::vector<std::vector<int64_t>> batches;
  auto cut = [&](std::vector<int64_t>::const_iterator begin, std::vector<int64_t>::const_iterator end) {
    for (auto it = begin; it < end; it += std::min<std::ptrdiff_t>(b, end - it))
      batches.emplace_back(it, it + std::min<std::ptrdiff_t>(b, end - it));
  };
  if (!options.group_by_length) {
    cut(order.begin(), order.end());
  } else {
    const int64_t mega = b * kMegabatchMultiplier;
    for (int64_t start = 0; start < n; start += mega) {
      auto first = order.begin() + start, last = order.begin() + std::min(n, start + mega);
      std::stable_sort(first, last, [&](int64_t x, int64_t y) { return lengths[x] > lengths[y]; });
      cut(first, last);
    }
    // The short batch, if any, stays last (drop_last can remove it); the others are shuffled, the longest first.
    const bool short_last = !batches.empty() && int64_t(batches.back().size()) < b;
    const size_t n_full = batches.size() - (short_last ? 1 : 0);
    auto batch_max = [&](const std::vector<int64_t>& batch) {
      int64_t m = 0;
      for (int64_t i : batch) m = std::max(m, lengths[i]);
      return m;
    };
    if (n_full > 1) {
      std::vector<std::vector<int64_t>> full(batches.begin(), batches.begin() + n_full);
      if (options.shuffle) rng.shuffle(full);
      auto longest = std::max_element(full.begin(), full.end(), [&](const auto& x, const auto& y) {
        return batch_max(x) < batch_max(y);
      });
      std::rotate(full.begin(), longest, longest + 1);
      std::move(full.begin(), full.end(), batches.begin());
    }
  }
  if (options.drop_last && !batches.empty() && int64_t(batches.back().size()) < b) batches.pop_back();
  return batches;
}

// ---- the loader -----------------------------------------------------------------------------------------------

DataLoader::DataLoader(std::shared_ptr<const LlavaDataset> dataset, std::shared_ptr<const Tokenizer> tokenizer,
                       std::shared_ptr<const ImageProcessor> images, LoaderOptions options,
                       std::optional<LoaderState> resume)
    : dataset_(std::move(dataset)), tokenizer_(std::move(tokenizer)), images_(std::move(images)),
      options_(std::move(options)) {
  if (options_.batch_size < 1) throw ConfigError("data loader: batch_size must be at least 1");
  if (options_.n_workers < 0 || options_.prefetch_batches < 1)
    throw ConfigError("data loader: n_workers must be >= 0 and prefetch_batches >= 1");
  if (options_.n_epochs < 0) throw ConfigError("data loader: n_epochs must be >= 0");
  if (options_.world_size < 1 || options_.rank < 0 || options_.rank >= options_.world_size)
    throw ConfigError("data loader: rank " + std::to_string(options_.rank) + " is not in [0, world size " +
                      std::to_string(options_.world_size) + ")");
  const int64_t n = int64_t(dataset_->records.size());
  if (n == 0) throw DataError(dataset_->path + ": no usable records (" + dataset_->skipped.to_text() + ")");
  skipped_ = dataset_->skipped;

  lengths_.reserve(n);
  for (const LlavaRecord& r : dataset_->records) lengths_.push_back(estimated_length(r, options_.n_image_tokens));
  families_ = assign_families(dataset_->records, options_.family_source);
  int64_t per_epoch = n;  // samples an epoch holds
  if (!options_.file_weights.empty()) {
    std::map<std::string, size_t> group_of;
    for (int64_t i = 0; i < n; ++i) {
      const std::string& file = dataset_->records[size_t(i)].file;
      auto [it, added] = group_of.emplace(file, groups_.size());
      if (added) {
        groups_.emplace_back();
        auto w = options_.file_weights.find(file);
        group_weights_.push_back(w == options_.file_weights.end() ? 1.0 : w->second);
      }
      groups_[it->second].push_back(i);
    }
    for (const auto& [file, w] : options_.file_weights)
      if (!(w >= 0.0) || !std::isfinite(w))
        throw ConfigError("data loader: the weight of " + file + " must be a finite number >= 0, got " + std::to_string(w));
    per_epoch = int64_t(epoch_pool(groups_, group_weights_, options_.seed, 0).size());
    if (per_epoch == 0) throw DataError(dataset_->path + ": the file weights leave no record in an epoch");
  }
  const int64_t b = options_.batch_size;
  batches_per_epoch_ = options_.drop_last ? per_epoch / b : (per_epoch + b - 1) / b;
  if (batches_per_epoch_ == 0)
    throw DataError(dataset_->path + ": " + std::to_string(n) + " records make no full batch of " +
                    std::to_string(options_.batch_size) + " with drop_last");

  if (resume) {
    if (resume->n_records != n || resume->batch_size != options_.batch_size || resume->seed != options_.seed)
      throw DataError("cannot resume the data loader: the checkpoint was saved with " +
                      std::to_string(resume->n_records) + " records, batch size " +
                      std::to_string(resume->batch_size) + ", seed " + std::to_string(resume->seed) + "; this run has " +
                      std::to_string(n) + ", " + std::to_string(options_.batch_size) + ", " +
                      std::to_string(options_.seed));
    if (resume->world_size != options_.world_size || resume->rank != options_.rank)
      throw DataError("cannot resume the data loader: the checkpoint was saved by rank " +
                      std::to_string(resume->rank) + " of " + std::to_string(resume->world_size) +
                      " processes; this is rank " + std::to_string(options_.rank) + " of " +
                      std::to_string(options_.world_size) + " (resume with the same number of processes)");
    start_global_ = resume->epoch * batches_per_epoch_ + resume->batch;
  } else {
    start_global_ = options_.rank;
  }
  if (options_.n_epochs > 0) end_global_ = options_.n_epochs * batches_per_epoch_;
  next_to_build_ = next_to_return_ = start_global_;
  for (int64_t i = 0; i < options_.n_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

std::pair<int64_t, int64_t> DataLoader::locate(int64_t global) const {
  return {global / batches_per_epoch_, global % batches_per_epoch_};
}

std::vector<int64_t> DataLoader::batch_records(int64_t epoch, int64_t batch) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = plans_.find(epoch);
  if (it == plans_.end()) {
    if (groups_.empty()) {
      it = plans_.emplace(epoch, epoch_batches(lengths_, options_, options_.seed, epoch)).first;
    } else {
      const std::vector<int64_t> pool = epoch_pool(groups_, group_weights_, options_.seed, epoch);
      it = plans_.emplace(epoch, epoch_batches(lengths_, options_, options_.seed, epoch, &pool)).first;
    }
    while (plans_.size() > 3) plans_.erase(plans_.begin());  // workers are at most an epoch apart
  }
  return it->second.at(size_t(batch));
}

DataLoader::Slot DataLoader::build(int64_t global) {
  Slot slot;
  try {
    const auto [epoch, index] = locate(global);
    const std::vector<int64_t> records = batch_records(epoch, index);
    std::vector<PreparedSample> samples;
    std::vector<std::string> ids;
    std::vector<int64_t> sample_family;
    for (int64_t r : records) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (bad_records_.count(r)) continue;  // found bad in an earlier epoch: counted then
      }
      const LlavaRecord& record = dataset_->records[size_t(r)];
      PreparedSample sample = prepare_sample(record, *tokenizer_, *images_, options_);
      if (!sample.problem.empty()) {
        if (options_.strict)
          throw DataError(record.file + ": record " + record.id + " (index " + std::to_string(record.index) +
                          "): " + sample.detail);
        slot.skips.emplace_back(r, sample.problem);
        continue;
      }
      ids.push_back(record.id);
      sample_family.push_back(families_.of.empty() ? -1 : families_.of[size_t(r)]);
      samples.push_back(std::move(sample));
    }
    if (samples.empty()) return slot;

    // collate: one row per sample, or (packing) samples in order laid into rows of up to max_len, the next row
    // begun when a sample does not fit (their order, and so the images', stays that of the batch); right-padded.
    Batch batch;
    batch.epoch = epoch;
    batch.index = index;
    batch.ids = std::move(ids);
    const int64_t n = int64_t(samples.size());
    std::vector<int64_t> row_of(static_cast<size_t>(n)), start_of(static_cast<size_t>(n));  // where each sample goes
    std::vector<int64_t> row_fill;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = int64_t(samples[size_t(i)].tokens.input_ids.size());
      const bool fits = options_.packing && !row_fill.empty() &&
                        (options_.max_len <= 0 || row_fill.back() + len <= options_.max_len);
      if (!fits) {
        row_fill.push_back(0);
        if (options_.packing) batch.packed_rows.emplace_back();
      }
      row_of[size_t(i)] = int64_t(row_fill.size()) - 1;
      start_of[size_t(i)] = row_fill.back();
      row_fill.back() += len;
      if (options_.packing) batch.packed_rows.back().push_back(len);
    }
    const int64_t n_rows = int64_t(row_fill.size()), width = *std::max_element(row_fill.begin(), row_fill.end());
    const int64_t pad_id = tokenizer_->pad_id() >= 0 ? tokenizer_->pad_id() : std::max<int64_t>(0, tokenizer_->unk_id());
    batch.input_ids = torch::full({n_rows, width}, pad_id, torch::kInt64);     // (B|R, T)
    batch.labels = torch::full({n_rows, width}, kIgnoreIndex, torch::kInt64);  // (B|R, T)
    batch.attention_mask = torch::zeros({n_rows, width}, torch::kInt64);        // (B|R, T)
    if (options_.packing) batch.position_ids = positions_for_packing(batch.packed_rows, width);
    if (!families_.names.empty()) {
      batch.token_family = torch::full({n_rows, width}, -1, torch::kInt64);  // (B|R, T)
      for (int64_t i = 0; i < n; ++i)
        batch.token_family[row_of[size_t(i)]]
            .narrow(0, start_of[size_t(i)], int64_t(samples[size_t(i)].tokens.input_ids.size()))
            .fill_(sample_family[size_t(i)]);
    }
    std::vector<torch::Tensor> pixels;
    auto ids_a = batch.input_ids.accessor<int64_t, 2>();
    auto labels_a = batch.labels.accessor<int64_t, 2>();
    auto mask_a = batch.attention_mask.accessor<int64_t, 2>();
    for (int64_t i = 0; i < n; ++i) {
      const TokenizedSample& t = samples[size_t(i)].tokens;
      const int64_t len = int64_t(t.input_ids.size()), row = row_of[size_t(i)], start = start_of[size_t(i)];
      for (int64_t j = 0; j < len; ++j) {
        ids_a[row][start + j] = t.input_ids[size_t(j)];
        // a sample's first label is never a target (nothing predicts it); packed, it would be the previous one's
        labels_a[row][start + j] = j == 0 ? kIgnoreIndex : t.labels[size_t(j)];
        mask_a[row][start + j] = 1;
      }
      batch.lengths.push_back(len);
      batch.n_tokens += len;
      batch.n_supervised += t.n_supervised;
      batch.n_truncated += t.truncated ? 1 : 0;
      for (torch::Tensor& p : samples[size_t(i)].pixel_values) pixels.push_back(std::move(p));
    }
    if (!pixels.empty()) batch.pixel_values = torch::stack(pixels);  // (I, 3, H, W)
    slot.batch = std::move(batch);
  } catch (...) {
    slot.error = std::current_exception();
  }
  return slot;
}

void DataLoader::worker_loop() {
  for (;;) {
    int64_t global;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] {
        return stopping_ || (next_to_build_ < next_to_return_ + options_.prefetch_batches * options_.world_size &&
                             (end_global_ < 0 || next_to_build_ < end_global_));
      });
      if (stopping_) return;
      global = next_to_build_;
      next_to_build_ += options_.world_size;
    }
    Slot slot = build(global);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (const auto& skip : slot.skips) bad_records_.insert(skip.first);
      ready_[global] = std::move(slot);
    }
    ready_cv_.notify_all();
  }
}

std::optional<Batch> DataLoader::next() {
  // A whole epoch of empty batches means every record is bad: with no epoch limit this would never end.
  int64_t empty_in_a_row = 0;
  for (;;) {
    Slot slot;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (end_global_ >= 0 && next_to_return_ >= end_global_) return std::nullopt;
      const int64_t global = next_to_return_;
      if (workers_.empty()) {
        lock.unlock();
        slot = build(global);
        lock.lock();
        for (const auto& skip : slot.skips) bad_records_.insert(skip.first);
      } else {
        if (!ready_.count(global)) {
          const auto start = std::chrono::steady_clock::now();
          ready_cv_.wait(lock, [&] { return ready_.count(global) > 0; });
          wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        }
        slot = std::move(ready_.at(global));
        ready_.erase(global);
      }
      next_to_return_ += options_.world_size;
      // Skips are counted here, in batch order, so the report (and its example ids) is the same every run.
      for (const auto& [record, reason] : slot.skips)
        if (counted_.insert(record).second) {
          const LlavaRecord& r = dataset_->records[size_t(record)];
          skipped_.add(reason, r.id, r.file);
        }
    }
    work_cv_.notify_all();
    if (slot.error) std::rethrow_exception(slot.error);
    if (slot.batch) return std::move(slot.batch);
    if (++empty_in_a_row >= batches_per_epoch_)
      throw DataError(dataset_->path + ": a whole epoch without one usable sample; skipped:\n" +
                      skip_report().to_text());
  }
}

LoaderState DataLoader::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  LoaderState s;
  s.seed = options_.seed;
  s.epoch = next_to_return_ / batches_per_epoch_;
  s.batch = next_to_return_ % batches_per_epoch_;
  s.n_records = int64_t(dataset_->records.size());
  s.batch_size = options_.batch_size;
  s.rank = options_.rank;
  s.world_size = options_.world_size;
  return s;
}

SkipReport DataLoader::skip_report() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return skipped_;
}

}  // namespace mole
