#include "core/activation.h"

#include <stdexcept>

#include <torch/torch.h>

namespace mole {

MOLE_ENUM_NAMES(Activation, "activation", {Activation::kGelu, "gelu"}, {Activation::kGeluTanh, "gelu_pytorch_tanh"},
                {Activation::kGeluTanh, "gelu_new"}, {Activation::kGeluTanh, "gelu_fast"},
                {Activation::kQuickGelu, "quick_gelu"}, {Activation::kSilu, "silu"}, {Activation::kSilu, "swish"},
                {Activation::kRelu, "relu"})

Activation parse_activation(const std::string& name, const std::string& where) {
  try {
    return parse_enum<Activation>(name);
  } catch (const ConfigError& e) {
    throw ConfigError(where + ": " + e.what());
  }
}

std::string activation_name(Activation act) { return enum_name(act); }

torch::Tensor apply_activation(Activation act, const torch::Tensor& x) {
  switch (act) {
    case Activation::kGelu: return torch::gelu(x);
    case Activation::kGeluTanh: return torch::gelu(x, "tanh");
    case Activation::kQuickGelu: return x * torch::sigmoid(1.702 * x);  // CLIP's QuickGELUActivation
    case Activation::kSilu: return torch::silu(x);
    case Activation::kRelu: return torch::relu(x);
  }
  return x;
}

}  // namespace mole
