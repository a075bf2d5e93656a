#include "moe/lora.h"

#include <cmath>

#include <torch/torch.h>

namespace mole {

double lora_scale(double alpha, int64_t rank, bool rslora) {
  return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

LoraImpl::LoraImpl(const LoraOptions& options_) : options(options_) {
  TORCH_CHECK(options.rank() >= 1, "LoRA: rank must be >= 1");
  lora_A = register_module("lora_A", Linear(LinearOptions(options.in_features(), options.rank()).bias(false)));
  lora_B = register_module("lora_B", Linear(LinearOptions(options.rank(), options.out_features()).bias(false)));
  dropout = register_module("dropout", Dropout(options.dropout()));
  if (!NoInitGuard::active()) reset_parameters();
}

void LoraImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(lora_A->weight, std::sqrt(5.0));
  lora_B->weight.zero_();  // the adapter starts as the identity change
}

torch::Tensor LoraImpl::delta(const torch::Tensor& x) {
  auto dtype = lora_A->weight.scalar_type();
  auto h = lora_A->base_forward(dropout(x.to(dtype))) * scale();  // (..., R): s scales the narrow side
  return lora_B->base_forward(h).to(x.scalar_type());            // (..., O)
}

torch::Tensor LoraImpl::merged_delta() { return torch::matmul(lora_B->weight, lora_A->weight) * scale(); }

}  // namespace mole
