#include "moe/lora.h"

#include <cmath>
#include <initializer_list>
#include <tuple>

#include <ATen/autocast_mode.h>
#include <torch/autograd.h>
#include <torch/torch.h>

namespace mole {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = x W^T + b + s (drop(x) A^T) B^T on x (N, I). Saves drop(x) and its keep mask, h = drop(x) A^T (N, R) and
// the weights; the frozen W gets a gradient only if it asks for one.
struct LoraLinearFunction : public torch::autograd::Function<LoraLinearFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& bias,
                        const Tensor& lora_A, const Tensor& lora_B, double s, double p) {
    const bool has_bias = bias.numel() > 0;  // no bias: an empty tensor (apply takes no undefined input)
    auto y = has_bias ? torch::addmm(bias, x, weight.t()) : torch::mm(x, weight.t());  // (N, O)
    Tensor xd = x, keep;
    if (p > 0) std::tie(xd, keep) = dropout_forward(x, p);
    auto h = torch::mm(xd, lora_A.t());  // (N, R)
    y.addmm_(h, lora_B.t(), 1.0, s);
    ctx->save_for_backward({x, weight, lora_A, lora_B, xd, h});
    ctx->saved_data["keep"] = keep;
    ctx->saved_data["s"] = s;
    ctx->saved_data["p"] = p;
    ctx->saved_data["bias"] = has_bias;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &lora_A = saved[2], &lora_B = saved[3], &xd = saved[4],
                 &h = saved[5];
    const double s = ctx->saved_data["s"].toDouble(), p = ctx->saved_data["p"].toDouble();
    auto dy = grad_out[0].contiguous();                          // (N, O)
    auto d_h = torch::mm(dy, lora_B).mul_(s);                    // (N, R)
    Tensor d_x, d_w, d_b, d_A, d_B;
    if (ctx->needs_input_grad(4)) d_B = torch::mm(dy.t(), h).mul_(s);  // (O, R)
    if (ctx->needs_input_grad(3)) d_A = torch::mm(d_h.t(), xd);       // (R, I)
    if (ctx->needs_input_grad(0)) {
      d_x = torch::mm(dy, weight);  // (N, I) through the frozen W, then the LoRA path added in place
      if (p > 0) dropout_backward_into(d_x, torch::mm(d_h, lora_A), ctx->saved_data["keep"].toTensor(), p, true);
      else d_x.addmm_(d_h, lora_A);
    }
    if (ctx->needs_input_grad(1)) d_w = torch::mm(dy.t(), x);
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) d_b = dy.sum(0);
    return {d_x, d_w, d_b, d_A, d_B, Tensor(), Tensor()};
  }
};

bool all_cpu_float32(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (t->defined() && (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32)) return false;
  return true;
}

}  // namespace

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

torch::Tensor LoraImpl::forward_with_base(LinearImpl& base, const torch::Tensor& x) {
  const Tensor &A = lora_A->weight, &B = lora_B->weight;
  if (!all_cpu_float32({&x, &base.weight, &base.bias, &A, &B}) || at::autocast::is_autocast_enabled(at::kCPU) ||
      x.dim() < 1 || x.numel() == 0)
    return LinearAdapter::forward_with_base(base, x);
  auto shape = x.sizes().vec();
  auto flat = x.reshape({-1, options.in_features()}).contiguous();  // (N, I)
  const double p = dropout->is_training() ? dropout->p : 0.0;
  auto bias = base.bias.defined() ? base.bias : torch::empty({0}, flat.options());
  auto y = LoraLinearFunction::apply(flat, base.weight, bias, A, B, scale(), p);  // (N, O)
  shape.back() = options.out_features();
  return y.view(shape);
}

torch::Tensor LoraImpl::merged_delta() { return torch::matmul(lora_B->weight, lora_A->weight) * scale(); }

}  // namespace mole
