// Data parallelism over a ProcessGroup: the same trainable parameters on every rank at the start, and after each
// backward the gradients averaged over the ranks, so that every rank takes the same optimizer step.
// A W-rank step on batches b_0..b_{W-1} so equals one process accumulating those W batches (grad_accum W, each
// batch weighing 1/W), up to the order of float additions.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

#include "dist/process_group.h"

namespace mole {

// Rank 0's values of `params` copied into every rank's, in one flat broadcast per dtype.
void broadcast_parameters(ProcessGroup& group, const std::vector<torch::Tensor>& params);

// Each parameter's .grad replaced by the mean over the ranks of theirs, a rank without a gradient for it
// counting as zeros; a parameter no rank has a gradient for keeps none (the optimizer skips it, as in one
// process). The gradients travel in flat buckets of about `bucket_bytes` (one allreduce each, in parameter
// order) after one small allreduce of which ranks hold which gradient.
void average_gradients(ProcessGroup& group, const std::vector<torch::Tensor>& params,
                       int64_t bucket_bytes = int64_t(25) << 20);

}  // namespace mole
