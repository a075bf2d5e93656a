// Activation functions named as Hugging Face configs name them (hidden_act, projector_hidden_act).
// Source: transformers/activations.py (ACT2FN).
#pragma once

#include <string>

#include <torch/types.h>

#include "core/fields.h"

namespace mole {

enum class Activation { kGelu, kGeluTanh, kQuickGelu, kSilu, kRelu };
// "gelu" (exact, erf), "gelu_pytorch_tanh" / "gelu_new" / "gelu_fast" (tanh form), "quick_gelu", "silu" /
// "swish", "relu"; the first name of each is the one written.
template <>
const EnumTable<Activation>& enum_table<Activation>();

// The activation named `name`; anything else is a ConfigError naming `where` (e.g. "config.json:
// vision_config.hidden_act").
Activation parse_activation(const std::string& name, const std::string& where);
std::string activation_name(Activation act);
torch::Tensor apply_activation(Activation act, const torch::Tensor& x);

}  // namespace mole
