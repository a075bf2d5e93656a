#include "core/linear.h"

#include <cmath>

#include <torch/nn/init.h>
#include <torch/torch.h>

namespace mole {

namespace {
thread_local bool g_no_init = false;
}

NoInitGuard::NoInitGuard() : previous_(g_no_init) { g_no_init = true; }
NoInitGuard::~NoInitGuard() { g_no_init = previous_; }
bool NoInitGuard::active() { return g_no_init; }

LinearImpl::LinearImpl(const LinearOptions& options_) : options(options_) { reset(); }

void LinearImpl::reset() {
  weight = register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty({options.out_features()}));
  } else {
    bias = torch::Tensor();
  }
  if (!NoInitGuard::active()) reset_parameters();
}

void LinearImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    double bound = 1.0 / std::sqrt(static_cast<double>(options.in_features()));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

torch::Tensor LinearImpl::base_forward(const torch::Tensor& x) { return torch::linear(x, weight, bias); }

torch::Tensor LinearAdapter::forward_with_base(LinearImpl& base, const torch::Tensor& x) {
  return base.base_forward(x) + delta(x);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (adapter && !merged_) return adapter->forward_with_base(*this, x);
  return torch::linear(x, weight, bias);
}

void LinearImpl::attach(std::shared_ptr<LinearAdapter> new_adapter) {
  TORCH_CHECK(!merged_, "Linear: unmerge the current adapter before attaching another");
  attach_adapter(*this, adapter, std::move(new_adapter));
}

void LinearImpl::detach() {
  TORCH_CHECK(!merged_, "Linear: unmerge the adapter before detaching it");
  detach_adapter(*this, adapter);
}

void LinearImpl::merge() {
  TORCH_CHECK(adapter, "Linear: no adapter to merge");
  if (merged_) return;
  torch::NoGradGuard no_grad;
  auto delta = adapter->merged_delta();
  TORCH_CHECK(delta.defined(), "Linear: this adapter depends on its input (a routed mixture) and cannot be merged");
  weight.add_(delta.to(weight.dtype()));
  merged_ = true;
}

void LinearImpl::fold_adapter() {
  merge();
  merged_ = false;
  detach_adapter(*this, adapter);
}

void LinearImpl::unmerge() {
  if (!merged_) return;
  torch::NoGradGuard no_grad;
  weight.sub_(adapter->merged_delta().to(weight.dtype()));
  merged_ = false;
}

}  // namespace mole
