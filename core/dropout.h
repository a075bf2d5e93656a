// Dropout as torch.nn.Dropout computes it (inverted: each element kept with probability 1 - p and scaled by
// 1 / (1 - p) while training, the identity otherwise), with the keep mask drawn by a counter-based hash in
// parallel instead of bernoulli_: on the CPU the Bernoulli draws of the adapters' input dropout were a sixth of a
// LoRA finetuning step (README, bench/vs_hf). The hash is seeded from LibTorch's default generator, so
// torch::manual_seed makes the masks reproducible. Other devices use torch::dropout.
#pragma once

#include <utility>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

namespace mole {

// x (...) -> (...); p in [0, 1)
torch::Tensor fast_dropout(const torch::Tensor& x, double p, bool training);

// The CPU kernels without autograd, for hand-written backwards (the fused LoRA Linear): the dropped-out x
// (contiguous) and its keep mask (uint8, x's shape), drawn as fast_dropout draws them; and out (+)= keep ? grad /
// (1 - p) : 0 into a contiguous out, added to it when `accumulate`.
std::pair<torch::Tensor, torch::Tensor> dropout_forward(const torch::Tensor& x, double p);
void dropout_backward_into(torch::Tensor& out, const torch::Tensor& grad, const torch::Tensor& keep, double p,
                           bool accumulate);

class DropoutImpl : public torch::nn::Module {
 public:
  explicit DropoutImpl(double p);
  torch::Tensor forward(const torch::Tensor& x) { return fast_dropout(x, p, is_training()); }
  double p;
};
TORCH_MODULE(Dropout);

}  // namespace mole
