// Precompiled header shared by every mole target: torch's headers dominate compile time.
#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>
