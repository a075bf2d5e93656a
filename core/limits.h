// The largest values mole accepts for the sizes that drive allocation, threads or loops, so that no option, config
// field or file can ask for terabytes or a million threads by a slip of the keyboard. Each is far above any model
// or dataset in use today; docs/LIMITS.md lists them with the reasons.
#pragma once

#include <cstdint>

namespace mole {

constexpr int64_t kMaxSequence = int64_t(1) << 20;    // tokens in one sequence: max_len, max_new_tokens (1M)
constexpr int64_t kMaxImageTokens = int64_t(1) << 16;  // ids one image expands to (LLaVA-1.5: 576)
constexpr int64_t kMaxWorkers = 256;                   // loader threads
constexpr int64_t kMaxThreads = 1024;                  // LibTorch intra-op threads
constexpr int64_t kMaxBatch = int64_t(1) << 16;        // samples in one batch
constexpr int64_t kMaxCount = int64_t(1) << 40;        // records, questions, samples, steps
constexpr int64_t kMaxLayers = int64_t(1) << 12;       // layers of a model, or an index into them
constexpr int64_t kMaxShapesImages = 10000000;         // images (or text records) make-data draws
constexpr int64_t kMaxRank = 16384;                    // LoRA rank
constexpr int64_t kMaxExperts = 1024;                  // experts in one MoLE layer
constexpr int64_t kMaxExpertRank = int64_t(1) << 20;   // experts x rank of one layer (its A and B are that wide)
constexpr int64_t kMaxWidth = int64_t(1) << 16;        // hidden and intermediate sizes, heads
constexpr int64_t kMaxImageSide = 16384;               // pixels on an image side a model takes

}  // namespace mole
