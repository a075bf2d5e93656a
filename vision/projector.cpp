#include "vision/projector.h"

#include <stdexcept>

#include <torch/torch.h>

namespace mole {

ProjectorImpl::ProjectorImpl(const ProjectorOptions& options_) : options(options_) {
  if (options.type() != "mlp2x_gelu" && options.type() != "linear")
    throw std::invalid_argument("projector type '" + options.type() + "' unknown (mlp2x_gelu or linear)");
  linear_1 = register_module(
      "linear_1", Linear(LinearOptions(options.in_features(), options.out_features()).bias(options.bias())));
  if (options.type() == "mlp2x_gelu")
    linear_2 = register_module(
        "linear_2", Linear(LinearOptions(options.out_features(), options.out_features()).bias(options.bias())));
}

torch::Tensor ProjectorImpl::forward(const torch::Tensor& features) {
  TORCH_CHECK(features.size(-1) == options.in_features(), "projector: expected features of size ",
              options.in_features(), ", got ", features.sizes());
  auto h = linear_1(features);
  if (!linear_2) return h;
  return linear_2(apply_activation(options.act(), h));  // linear_2(act(linear_1(x)))
}

}  // namespace mole
