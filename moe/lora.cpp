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

// y = x W^T + b + s ((drop(x) A^T) * G) B^T on x (N, I), A (E*R, I), B (O, E*R), G (N, E) each expert's gate
// over its R columns (empty: plain LoRA). Saves drop(x) and its keep mask, h = drop(x) A^T (N, E*R), G and the
// weights; the frozen W gets a gradient only if it asks for one.
struct LoraLinearFunction : public torch::autograd::Function<LoraLinearFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& bias,
                        const Tensor& lora_A, const Tensor& lora_B, const Tensor& gates, double s, double p) {
    const bool has_bias = bias.numel() > 0;  // no bias, no gates: empty tensors (apply takes no undefined input)
    auto y = has_bias ? torch::addmm(bias, x, weight.t()) : torch::mm(x, weight.t());  // (N, O)
    Tensor xd = x, keep;
    if (p > 0) std::tie(xd, keep) = dropout_forward(x, p);
    auto h = torch::mm(xd, lora_A.t());  // (N, E*R)
    y.addmm_(gated(h, gates), lora_B.t(), 1.0, s);
    ctx->save_for_backward({x, weight, lora_A, lora_B, xd, h, gates});
    ctx->saved_data["keep"] = keep;
    ctx->saved_data["s"] = s;
    ctx->saved_data["p"] = p;
    ctx->saved_data["bias"] = has_bias;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &lora_A = saved[2], &lora_B = saved[3], &xd = saved[4],
                 &h = saved[5], &gates = saved[6];
    const double s = ctx->saved_data["s"].toDouble(), p = ctx->saved_data["p"].toDouble();
    auto dy = grad_out[0].contiguous();             // (N, O)
    auto d_hg = torch::mm(dy, lora_B).mul_(s);      // (N, E*R) gradient of the gated h
    Tensor d_x, d_w, d_b, d_A, d_B, d_gates;
    if (ctx->needs_input_grad(4)) d_B = torch::mm(dy.t(), gated(h, gates)).mul_(s);  // (O, E*R)
    if (gates.numel() > 0 && ctx->needs_input_grad(5)) {                             // (N, E)
      const int64_t n = h.size(0), e = gates.size(1);
      d_gates = (d_hg.view({n, e, -1}) * h.view({n, e, -1})).sum(-1);
    }
    auto d_h = gated(d_hg, gates);                                     // (N, E*R)
    if (ctx->needs_input_grad(3)) d_A = torch::mm(d_h.t(), xd);       // (E*R, I)
    if (ctx->needs_input_grad(0)) {
      d_x = torch::mm(dy, weight);  // (N, I) through the frozen W, then the LoRA path added in place
      if (p > 0) dropout_backward_into(d_x, torch::mm(d_h, lora_A), ctx->saved_data["keep"].toTensor(), p, true);
      else d_x.addmm_(d_h, lora_A);
    }
    if (ctx->needs_input_grad(1)) d_w = torch::mm(dy.t(), x);
    if (ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2)) d_b = dy.sum(0);
    return {d_x, d_w, d_b, d_A, d_B, d_gates, Tensor(), Tensor()};
  }

  // h (N, E*R) with each expert's R columns times its gate; h itself without gates
  static Tensor gated(const Tensor& h, const Tensor& gates) {
    if (gates.numel() == 0) return h;
    const int64_t n = h.size(0), e = gates.size(1);
    return (h.view({n, e, -1}) * gates.unsqueeze(-1)).view({n, -1});
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

bool fused_lora_applies(const LinearImpl& base, const torch::Tensor& x, const torch::Tensor& adapter_weight) {
  return all_cpu_float32({&x, &base.weight, &base.bias, &adapter_weight}) &&
         !at::autocast::is_autocast_enabled(at::kCPU) && x.dim() >= 1 && x.numel() > 0;
}

torch::Tensor fused_lora_linear(LinearImpl& base, const torch::Tensor& x, const torch::Tensor& lora_A,
                                const torch::Tensor& lora_B, const torch::Tensor& gates, double scale, double dropout) {
  if (!fused_lora_applies(base, x, lora_A) || !all_cpu_float32({&lora_B, &gates})) return {};
  const int64_t in = base.options.in_features();
  auto shape = x.sizes().vec();
  auto flat = x.reshape({-1, in}).contiguous();  // (N, I)
  auto empty = torch::empty({0}, flat.options());
  auto y = LoraLinearFunction::apply(flat, base.weight, base.bias.defined() ? base.bias : empty, lora_A, lora_B,
                                     gates.defined() ? gates.contiguous() : empty, scale, dropout);  // (N, O)
  shape.back() = base.options.out_features();
  return y.view(shape);
}

torch::Tensor LoraImpl::forward_with_base(LinearImpl& base, const torch::Tensor& x) {
  auto y = fused_lora_linear(base, x, lora_A->weight, lora_B->weight, {}, scale(),
                             dropout->is_training() ? dropout->p : 0.0);
  return y.defined() ? y : LinearAdapter::forward_with_base(base, x);
}

torch::Tensor LoraImpl::merged_delta() { return torch::matmul(lora_B->weight, lora_A->weight) * scale(); }

}  // namespace mole
