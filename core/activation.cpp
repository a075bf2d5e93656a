#include "core/activation.h"

#include <stdexcept>

#include <torch/torch.h>

namespace mole {

Activation parse_activation(const std::string& name, const std::string& where) {
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::kGeluTanh;
  if (name == "quick_gelu") return Activation::kQuickGelu;
  if (name == "silu" || name == "swish") return Activation::kSilu;
  if (name == "relu") return Activation::kRelu;
  throw std::invalid_argument(where + ": unknown activation '" + name +
                              "' (known: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, silu, relu)");
}

std::string activation_name(Activation act) {
  switch (act) {
    case Activation::kGelu: return "gelu";
    case Activation::kGeluTanh: return "gelu_pytorch_tanh";
    case Activation::kQuickGelu: return "quick_gelu";
    case Activation::kSilu: return "silu";
    case Activation::kRelu: return "relu";
  }
  return "?";
}

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
