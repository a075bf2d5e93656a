// mole's Linear: y = x W^T + b, the one place where adapters attach (llama.cpp's "single matmul hook").
// Unlike torch::nn::Linear it can skip its random initialisation (NoInitGuard) so that a checkpoint loader
// does not pay for, or hold in memory, weights it is about to overwrite: torch::empty is lazily backed, so a
// 7B model built under the guard costs no memory until its tensors are loaded.
#pragma once

#include <cstdint>
#include <memory>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "core/activation.h"

namespace mole {

// While one is alive on this thread, mole modules allocate their parameters without initialising them.
class NoInitGuard {
 public:
  NoInitGuard();
  ~NoInitGuard();
  NoInitGuard(const NoInitGuard&) = delete;
  NoInitGuard& operator=(const NoInitGuard&) = delete;
  static bool active();

 private:
  bool previous_;
};

// What an adapter (LoRA, MoLE) adds to a frozen Linear: y = W x + b + delta(x). Attached with
// LinearImpl::attach(), registered as the submodule "adapter", so the model code never knows it is there.
class LinearImpl;
class LinearAdapter : public torch::nn::Module {
 public:
  // x (..., in) -> (..., out) in x's dtype.
  virtual torch::Tensor delta(const torch::Tensor& x) = 0;
  // The adapted layer's whole output, base(x) + delta(x); an adapter may compute it in one fused step.
  virtual torch::Tensor forward_with_base(LinearImpl& base, const torch::Tensor& x);
  // The dense (out, in) weight change when the adapter is input-independent (plain LoRA), else undefined.
  virtual torch::Tensor merged_delta() { return {}; }
};

struct LinearOptions {
  LinearOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  /// Whether the layer has an additive bias.
  TORCH_ARG(bool, bias) = true;
};

class LinearImpl : public torch::nn::Cloneable<LinearImpl> {
 public:
  explicit LinearImpl(const LinearOptions& options);
  void reset() override;
  // Kaiming-uniform weight and uniform bias, as torch.nn.Linear.
  void reset_parameters();
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out), adapter included
  torch::Tensor base_forward(const torch::Tensor& x);  // W x + b without the adapter

  void attach(std::shared_ptr<LinearAdapter> adapter);  // replaces any previous adapter
  void detach();
  // Folds a merge-able adapter (plain LoRA) into W, so inference costs nothing extra; unmerge() undoes it.
  void merge();
  void unmerge();
  // Folds a merge-able adapter into W for good and removes it: a plain Linear again (mole export --merge).
  void fold_adapter();
  bool merged() const { return merged_; }

  LinearOptions options;
  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out) or undefined
  std::shared_ptr<LinearAdapter> adapter;

 private:
  bool merged_ = false;
};
TORCH_MODULE(Linear);

// The frozen projections of a gated FFN block, y = W_d (act(W_g x) * (W_u x)) (LLaMA's SwiGLU MLP), as an
// FFN-level adapter sees them: it reuses them (base_forward, weight) and never owns them.
struct GatedFfnBase {
  LinearImpl& gate_proj;
  LinearImpl& up_proj;
  LinearImpl& down_proj;
  Activation act;
};

// Registers `adapter` as the submodule "adapter" of `owner` (replacing the one in `slot`) and keeps it in `slot`;
// detach_adapter removes it. Shared by the two hooks (Linear and the gated FFN block).
template <class Adapter>
void attach_adapter(torch::nn::Module& owner, std::shared_ptr<Adapter>& slot, std::shared_ptr<Adapter> adapter) {
  if (slot) owner.replace_module("adapter", adapter);
  else owner.register_module("adapter", adapter);
  slot = std::move(adapter);
}
template <class Adapter>
void detach_adapter(torch::nn::Module& owner, std::shared_ptr<Adapter>& slot) {
  if (!slot) return;
  owner.unregister_module("adapter");
  slot.reset();
}

// An adapter that replaces a whole gated FFN block's computation (FFN-level MoLE: one router per block).
// Attached with the block's attach(), registered as its submodule "adapter". x (..., D) -> (..., D).
class FfnAdapter : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, const GatedFfnBase& base) = 0;
};

}  // namespace mole
