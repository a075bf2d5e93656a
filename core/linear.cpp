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

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return torch::linear(x, weight, bias); }

}  // namespace mole
