#include "language/packing.h"

#include <torch/torch.h>

namespace mole {

torch::Tensor positions_for_packing(const PackedRows& rows, int64_t width) {
  auto positions = torch::empty({int64_t(rows.size()), width}, torch::kInt64);  // (B, T)
  auto p = positions.accessor<int64_t, 2>();
  for (size_t b = 0; b < rows.size(); ++b) {
    int64_t t = 0;
    for (int64_t len : rows[b])
      for (int64_t j = 0; j < len; ++j) p[int64_t(b)][t++] = j;
    for (int64_t j = 0; t < width; ++j) p[int64_t(b)][t++] = j;  // the row's padding: a sequence of its own
  }
  return positions;
}

}  // namespace mole
