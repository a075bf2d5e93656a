// The embedded default dataset: synthetic images of coloured shapes drawn with OpenCV, with captions (stage-1
// alignment, "plain"), multimodal instructions whose answer styles conflict on purpose (short-answer VQA,
// detailed descriptions, yes/no, multiple choice) plus text-only tasks, evaluation files in the real formats
// (VQAv2 questions + annotations with 10 human-like answers, a LLaVA question jsonl, a text-only set) and a
// text corpus for the tokenizer and the base language model. Deterministic for a seed: same seed, same bytes.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace mole {

struct ShapesOptions {
  std::string out_dir;
  int64_t n_train = 2000;  // training images (each gives one caption and several instructions)
  int64_t n_eval = 200;    // held-out images for the evaluation files
  int64_t size = 64;       // image side in pixels
  uint64_t seed = 0;
  int64_t n_text_train = 1000;  // text-only instruction records
  int64_t n_text_eval = 200;
};

// Writes everything under out_dir (see the .cpp header for the layout) and returns a summary (counts per file
// and task family), also written as out_dir/dataset_info.json.
nlohmann::json make_shapes_dataset(const ShapesOptions& options);

}  // namespace mole
