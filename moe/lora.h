// LoRA on a frozen Linear: y = W x + s * B A drop(x), A (r x in) Kaiming-uniform, B (out x r) zeros,
// s = alpha / r, or alpha / sqrt(r) with rsLoRA. Source: Hu et al. 2021; PEFT peft/tuners/lora/layer.py
// (Linear.update_layer, reset_lora_parameters: kaiming_uniform_(a=sqrt(5)) on A, zeros on B).
// Parameter names lora_A.weight / lora_B.weight as PEFT's.
//
// N=tokens I=in features O=out features R=rank
#pragma once

#include <cstdint>

#include "core/dropout.h"
#include "core/linear.h"

namespace mole {

// s = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajdzievski 2023).
double lora_scale(double alpha, int64_t rank, bool rslora);

struct LoraOptions {
  LoraOptions(int64_t in_features, int64_t out_features) : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(int64_t, rank) = 16;
  TORCH_ARG(double, alpha) = 32.0;
  /// Dropout on the adapter's input while training.
  TORCH_ARG(double, dropout) = 0.0;
  /// rsLoRA scaling alpha / sqrt(r).
  TORCH_ARG(bool, rslora) = false;
};

class LoraImpl : public LinearAdapter {
 public:
  explicit LoraImpl(const LoraOptions& options);
  void reset_parameters();
  torch::Tensor delta(const torch::Tensor& x) override;  // (..., I) -> (..., O): s * B A drop(x)
  // W x + b + s B A drop(x) by fused_lora_linear where it applies, else op by op.
  torch::Tensor forward_with_base(LinearImpl& base, const torch::Tensor& x) override;
  torch::Tensor merged_delta() override;                 // s * B A, (O, I)
  double scale() const { return lora_scale(options.alpha(), options.rank(), options.rslora()); }

  LoraOptions options;
  Linear lora_A = nullptr;  // (R, I)
  Linear lora_B = nullptr;  // (O, R)
  Dropout dropout = nullptr;  // on the adapter input (core/dropout.h)
};
TORCH_MODULE(Lora);

// base(x) + s ((drop(x) A^T) * G) B^T as one autograd function with a hand-written backward, for float32 on the
// CPU outside autocast: the low-rank term goes into the frozen GEMM's output in place, its input gradient into the
// frozen one's, dropout's backward inside that add. x (..., I), A (E*R, I), B (O, E*R), gates (N, E) each expert's
// gate over its R columns, or undefined for plain LoRA (E = 1). Undefined where it does not apply (another device
// or dtype, autocast): the caller takes the op-by-op form.
bool fused_lora_applies(const LinearImpl& base, const torch::Tensor& x, const torch::Tensor& adapter_weight);
torch::Tensor fused_lora_linear(LinearImpl& base, const torch::Tensor& x, const torch::Tensor& lora_A,
                                const torch::Tensor& lora_B, const torch::Tensor& gates, double scale, double dropout);

}  // namespace mole
