// The optimizer and learning-rate schedule of `mole train`: AdamW with parameter groups (weight decay only on
// matrices; separate learning rates for the projector and the routers) and the cosine schedule with linear
// warm-up. Written here rather than taken from torch::optim so that its whole state is named tensors that a
// checkpoint stores and restores exactly (exp_avg/<param>, exp_avg_sq/<param>, plus the step count).
//
// References: torch.optim.AdamW (decoupled weight decay: p *= 1 - lr * wd, then the Adam step with bias
// correction, eps outside the square root); transformers' get_cosine_schedule_with_warmup
// (optimization.py: lr = base * step / warmup during warm-up, then base * 0.5 * (1 + cos(pi * progress))).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

#include "core/safetensors.h"

namespace mole {

struct ParamGroup {
  std::string name;    // "decay", "no_decay", "projector", "router", ... (for logs)
  double lr = 1e-4;    // peak learning rate
  double weight_decay = 0.0;
  std::vector<std::pair<std::string, torch::Tensor>> params;  // (full name, parameter)
};

// Splits named trainable parameters into groups: routers (names with ".router.") at router_lr, the projector
// (multi_modal_projector.*) at projector_lr, everything else at lr; within each, matrices (dim >= 2) get
// weight_decay and vectors (biases, norms) none. Empty groups are left out.
std::vector<ParamGroup> make_param_groups(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                                          double lr, double projector_lr, double router_lr, double weight_decay);

class AdamW {
 public:
  explicit AdamW(std::vector<ParamGroup> groups, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8);
  // One update of every parameter that has a gradient, at group.lr * lr_multiplier.
  void step(double lr_multiplier);
  void zero_grad();
  int64_t steps() const { return steps_; }
  const std::vector<ParamGroup>& groups() const { return groups_; }

  // exp_avg/<name> and exp_avg_sq/<name> for every parameter that has state, and "step" (int64 scalar).
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  // Restores what state_tensors() saved; a parameter missing from the file or of another shape is an error
  // naming it (the checkpoint belongs to another model or adapter).
  void load_state(const TensorStore& store);

 private:
  struct Moments {
    torch::Tensor exp_avg, exp_avg_sq;
  };
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<Moments>> moments_;  // [group][param]
  double beta1_, beta2_, eps_;
  int64_t steps_ = 0;
};

// transformers' get_cosine_schedule_with_warmup as a multiplier of the peak rate, for 0-based `step`.
double cosine_with_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio = 0.0);

// Global L2 norm of the gradients, computed in float32 (or float64 for float64 parameters). Parameters
// without a gradient are left out. The norm is returned even when it is not finite.
double grad_norm(const std::vector<ParamGroup>& groups);
// Scales every gradient by max_norm / norm when norm > max_norm (torch.nn.utils.clip_grad_norm_).
void clip_grads(const std::vector<ParamGroup>& groups, double norm, double max_norm);

}  // namespace mole
