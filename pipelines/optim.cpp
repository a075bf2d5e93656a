#include "pipelines/optim.h"

#include <cmath>
#include <stdexcept>

#include <torch/torch.h>

namespace mole {

std::vector<ParamGroup> make_param_groups(const std::vector<std::pair<std::string, torch::Tensor>>& params,
                                          double lr, double projector_lr, double router_lr, double weight_decay) {
  // Order: the same every run for the same parameters (the caller's order), which the checkpoint relies on
  // only through names, never positions.
  std::vector<ParamGroup> groups = {{"decay", lr, weight_decay, {}},
                                    {"no_decay", lr, 0.0, {}},
                                    {"projector", projector_lr, weight_decay, {}},
                                    {"projector_no_decay", projector_lr, 0.0, {}},
                                    {"router", router_lr, weight_decay, {}},
                                    {"router_no_decay", router_lr, 0.0, {}}};
  for (const auto& [name, p] : params) {
    size_t base = 0;
    if (name.find(".router.") != std::string::npos) base = 4;
    else if (name.rfind("multi_modal_projector.", 0) == 0) base = 2;
    groups[base + (p.dim() >= 2 ? 0 : 1)].params.emplace_back(name, p);
  }
  std::vector<ParamGroup> out;
  for (auto& g : groups)
    if (!g.params.empty()) out.push_back(std::move(g));
  return out;
}

AdamW::AdamW(std::vector<ParamGroup> groups, double beta1, double beta2, double eps)
    : groups_(std::move(groups)), beta1_(beta1), beta2_(beta2), eps_(eps) {
  for (const auto& g : groups_) moments_.emplace_back(g.params.size());
}

void AdamW::zero_grad() {
  for (auto& g : groups_)
    for (auto& [name, p] : g.params) p.mutable_grad() = torch::Tensor();
}

void AdamW::step(double lr_multiplier) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double correction1 = 1.0 - std::pow(beta1_, double(steps_));
  const double correction2 = 1.0 - std::pow(beta2_, double(steps_));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    ParamGroup& g = groups_[gi];
    const double lr = g.lr * lr_multiplier;
    for (size_t pi = 0; pi < g.params.size(); ++pi) {
      torch::Tensor& p = g.params[pi].second;
      if (!p.grad().defined()) continue;
      const torch::Tensor grad = p.grad();
      Moments& m = moments_[gi][pi];
      if (!m.exp_avg.defined()) {
        m.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
        m.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
      }
      // p = p * (1 - lr * wd)                        (decoupled weight decay)
      if (g.weight_decay != 0.0) p.mul_(1.0 - lr * g.weight_decay);
      // m = b1 m + (1 - b1) g ;  v = b2 v + (1 - b2) g^2
      m.exp_avg.lerp_(grad, 1.0 - beta1_);
      m.exp_avg_sq.mul_(beta2_).addcmul_(grad, grad, 1.0 - beta2_);
      // p -= lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)
      const torch::Tensor denom = (m.exp_avg_sq.sqrt() / std::sqrt(correction2)).add_(eps_);
      p.addcdiv_(m.exp_avg, denom, -lr / correction1);
    }
  }
}

std::vector<std::pair<std::string, torch::Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.emplace_back("step", torch::tensor(steps_, torch::kInt64));
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t pi = 0; pi < groups_[gi].params.size(); ++pi) {
      const Moments& m = moments_[gi][pi];
      if (!m.exp_avg.defined()) continue;
      out.emplace_back("exp_avg/" + groups_[gi].params[pi].first, m.exp_avg);
      out.emplace_back("exp_avg_sq/" + groups_[gi].params[pi].first, m.exp_avg_sq);
    }
  return out;
}

void AdamW::load_state(const TensorStore& store) {
  if (!store.contains("step")) throw FormatError(store.path() + ": optimizer state has no \"step\"");
  steps_ = store.tensor("step").item<int64_t>();
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t pi = 0; pi < groups_[gi].params.size(); ++pi) {
      const auto& [name, p] = groups_[gi].params[pi];
      Moments& m = moments_[gi][pi];
      if (!store.contains("exp_avg/" + name)) {
        if (steps_ > 0 && p.requires_grad())
          throw FormatError(store.path() + ": optimizer state has no moments for parameter " + name +
                            " (a checkpoint of another model or adapter?)");
        continue;
      }
      torch::Tensor a = store.tensor("exp_avg/" + name, p.scalar_type());
      torch::Tensor b = store.tensor("exp_avg_sq/" + name, p.scalar_type());
      if (a.sizes() != p.sizes() || b.sizes() != p.sizes())
        throw FormatError(store.path() + ": optimizer state for " + name + " has shape " +
                          c10::str(a.sizes()) + ", the parameter " + c10::str(p.sizes()));
      m.exp_avg = a.to(p.device()).clone();
      m.exp_avg_sq = b.to(p.device()).clone();
    }
}

double cosine_with_warmup(int64_t step, int64_t warmup_steps, int64_t total_steps, double min_ratio) {
  if (step < warmup_steps) return double(step) / double(std::max<int64_t>(1, warmup_steps));
  const double progress =
      double(step - warmup_steps) / double(std::max<int64_t>(1, total_steps - warmup_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return min_ratio + (1.0 - min_ratio) * cosine;
}

double grad_norm(const std::vector<ParamGroup>& groups) {
  torch::NoGradGuard no_grad;
  torch::Tensor sum;
  for (const auto& g : groups)
    for (const auto& [name, p] : g.params) {
      if (!p.grad().defined()) continue;
      torch::Tensor sq = p.grad().to(p.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32)
                             .pow(2).sum().to(torch::kFloat64).cpu();
      sum = sum.defined() ? sum + sq : sq;
    }
  return sum.defined() ? std::sqrt(sum.item<double>()) : 0.0;
}

void clip_grads(const std::vector<ParamGroup>& groups, double norm, double max_norm) {
  if (!(max_norm > 0.0) || !(norm > max_norm)) return;
  torch::NoGradGuard no_grad;
  const double scale = max_norm / (norm + 1e-6);  // torch's clip_coef = max_norm / (total_norm + 1e-6)
  for (const auto& g : groups)
    for (const auto& [name, p] : g.params)
      if (p.grad().defined()) p.grad().mul_(scale);
}

}  // namespace mole
