// Names of floating-point dtypes on the command line and in configs.
#pragma once

#include <string>

#include <torch/types.h>

namespace mole {

// "float32"/"fp32"/"f32", "bfloat16"/"bf16", "float16"/"fp16"/"half"; anything else throws naming `what`.
torch::ScalarType parse_float_dtype(const std::string& name, const std::string& what);
std::string dtype_name(torch::ScalarType type);  // "float32", "bfloat16", "int64", ...

}  // namespace mole
