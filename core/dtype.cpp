#include "core/dtype.h"

#include <stdexcept>

#include <c10/core/ScalarType.h>

namespace mole {

torch::ScalarType parse_float_dtype(const std::string& name, const std::string& what) {
  if (name == "float32" || name == "fp32" || name == "f32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return torch::kFloat16;
  throw std::invalid_argument(what + ": unknown dtype '" + name + "' (float32, bfloat16, float16)");
}

std::string dtype_name(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat64: return "float64";
    case torch::kInt64: return "int64";
    case torch::kInt32: return "int32";
    case torch::kBool: return "bool";
    default: return c10::toString(type);
  }
}

}  // namespace mole
