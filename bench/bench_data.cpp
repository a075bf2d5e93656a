// bench_data: how fast the data side feeds a trainer. Three measurements on one dataset:
//   1. images decoded + preprocessed (LLaVA-1.5: pad to square, PIL-exact bicubic to 336, crop, normalise),
//      spread over the loader's worker count;
//   2. samples tokenized with the conversation template (image expansion, labels), same threads;
//   3. the DataLoader itself (workers, bounded queue, collation), end to end, as the trainer sees it.
// Last line: images_per_s=X samples_per_s=Y (measurements 1 and 2).
//
//   build/bench_data                                   a shapes dataset drawn here (448 px PNGs), 2 workers
//   build/bench_data --workers 1 --size 640 --images-n 400
//   build/bench_data --data llava.json --images DIR --tokenizer DIR   someone's own data
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "data/loader.h"
#include "data/shapes.h"

using namespace mole;
namespace fs = std::filesystem;

namespace {

std::string arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (argv[i] == "--" + name) return argv[i + 1];
  return fallback;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs work(i) for i in [0, n) on `threads` threads (an atomic counter hands out items) and returns seconds.
double parallel_seconds(int64_t n, int64_t threads, const std::function<void(int64_t)>& work) {
  std::atomic<int64_t> next{0};
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < std::max<int64_t>(1, threads); ++t)
    pool.emplace_back([&] {
      for (int64_t i; (i = next++) < n;) work(i);
    });
  for (auto& t : pool) t.join();
  return seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1);  // loader work is per-thread; keep LibTorch's pool out of it
  const int64_t workers = std::stoll(arg(argc, argv, "workers", "2"));
  const int64_t batch_size = std::stoll(arg(argc, argv, "batch", "16"));
  const int64_t n_image_tokens = std::stoll(arg(argc, argv, "image-tokens", "576"));
  std::string data = arg(argc, argv, "data", ""), image_dir = arg(argc, argv, "images", "");
  std::string tokenizer_dir = arg(argc, argv, "tokenizer", "");

  if (data.empty()) {
    const std::string dir = (fs::temp_directory_path() / "mole_bench_data").string();
    ShapesOptions shapes;
    shapes.out_dir = dir;
    shapes.n_train = std::stoll(arg(argc, argv, "images-n", "300"));
    shapes.n_eval = 1;
    shapes.n_text_train = shapes.n_train / 2;
    shapes.n_text_eval = 1;
    shapes.size = std::stoll(arg(argc, argv, "size", "448"));
    auto t0 = std::chrono::steady_clock::now();
    make_shapes_dataset(shapes);
    std::printf("drew a shapes dataset: %lld images of %lldx%lld px (PNG) in %.1f s -> %s\n",
                (long long)shapes.n_train, (long long)shapes.size, (long long)shapes.size, seconds_since(t0),
                dir.c_str());
    data = dir + "/instruct.json";
    image_dir = dir;  // records name images/train/NNNNNN.png
    if (tokenizer_dir.empty()) {
      tokenizer_dir = dir + "/tokenizer";
      if (!fs::exists(tokenizer_dir + "/tokenizer.model")) Tokenizer::train(dir + "/corpus.txt", 512, tokenizer_dir);
    }
  }
  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(data));
  auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(tokenizer_dir));
  auto images = std::make_shared<const ImageProcessor>(ImageProcessorConfig{});  // LLaVA-1.5, 336 px
  LoaderOptions options;
  options.batch_size = batch_size;
  options.n_workers = workers;
  options.n_image_tokens = n_image_tokens;
  options.image_dir = image_dir;
  options.max_len = 2048;

  std::vector<std::string> paths;
  for (const LlavaRecord& r : dataset->records)
    for (const std::string& p : r.images) paths.push_back(image_dir + "/" + p);
  std::sort(paths.begin(), paths.end());
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  std::printf("%s: %zu records, %zu distinct images; %lld threads\n", data.c_str(), dataset->records.size(),
              paths.size(), (long long)workers);

  // 1. images
  std::atomic<int64_t> image_errors{0};
  const double image_s = parallel_seconds(int64_t(paths.size()), workers, [&](int64_t i) {
    try {
      images->load(paths[size_t(i)]);
    } catch (const ImageError&) {
      ++image_errors;
    }
  });
  const double images_per_s = double(paths.size()) / image_s;
  std::printf("decode + preprocess to 3x336x336: %.1f images/s (%lld unreadable)\n", images_per_s,
              (long long)image_errors.load());

  // 2. tokenization
  std::atomic<int64_t> tokens{0};
  const int64_t n_records = int64_t(dataset->records.size());
  const double token_s = parallel_seconds(n_records, workers, [&](int64_t i) {
    const LlavaRecord& r = dataset->records[size_t(i)];
    tokens += int64_t(tokenize_conversation(r.turns, *tokenizer, options.conversation_template, n_image_tokens,
                                            options.max_len).input_ids.size());
  });
  const double samples_per_s = double(n_records) / token_s;
  std::printf("tokenize (vicuna_v1, %lld ids per image): %.1f samples/s, %.0f tokens/s\n",
              (long long)n_image_tokens, samples_per_s, double(tokens.load()) / token_s);

  // 3. the loader, end to end
  auto t0 = std::chrono::steady_clock::now();
  DataLoader loader(dataset, tokenizer, images, options);
  int64_t samples = 0, n_images = 0, batches = 0;
  while (auto b = loader.next()) {
    ++batches;
    samples += b->size();
    n_images += b->pixel_values.defined() ? b->pixel_values.size(0) : 0;
  }
  const double loader_s = seconds_since(t0);
  std::printf("DataLoader (%lld workers, batch %lld): %.1f samples/s, %.1f images/s, %lld batches, "
              "%lld skipped\n",
              (long long)workers, (long long)batch_size, double(samples) / loader_s, double(n_images) / loader_s,
              (long long)batches, (long long)loader.skip_report().total());
  std::printf("images_per_s=%.1f samples_per_s=%.1f\n", images_per_s, samples_per_s);
  return 0;
}
