// Packed rows, for padding-free training (data.packing): a batch's samples laid back to back into rows instead of
// one padded row each. A token attends to the earlier tokens of its own sample only and positions restart at 0
// with each sample, so every sample is computed exactly as it would be alone in a padded row.
//
// B=rows T=row width
#pragma once

#include <cstdint>
#include <vector>

#include <torch/types.h>

namespace mole {

// For each row the lengths of the whole samples laid in it, in order; the tokens after them are the row's padding.
using PackedRows = std::vector<std::vector<int64_t>>;

// Positions of packed rows of width `width`: 0, 1, ... within each sample (and within the row's padding).
// -> (B, T) int64
torch::Tensor positions_for_packing(const PackedRows& rows, int64_t width);

}  // namespace mole
