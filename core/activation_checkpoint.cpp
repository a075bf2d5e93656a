#include "core/activation_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/torch.h>

namespace mole {

namespace {

using torch::autograd::variable_list;

// The autocast settings a forward ran under, per device type that mole runs on.
struct AutocastState {
  bool cpu = false, cuda = false;
  at::ScalarType cpu_dtype = at::kBFloat16, cuda_dtype = at::kHalf;
  static AutocastState now() {
    AutocastState s;
    s.cpu = at::autocast::is_autocast_enabled(at::kCPU);
    s.cuda = at::autocast::is_autocast_enabled(at::kCUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
    s.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
    return s;
  }
  void set() const {
    at::autocast::set_autocast_enabled(at::kCPU, cpu);
    at::autocast::set_autocast_enabled(at::kCUDA, cuda);
    at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
    at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
  }
};

struct CheckpointBackward : torch::autograd::Node {
  CheckpointFn fn;
  torch::Tensor x;  // the block's input, detached: what checkpointing keeps
  bool x_needs_grad = false;
  std::vector<torch::Tensor> params;
  torch::Tensor generator_state;  // the CPU generator before the first run
  AutocastState autocast;
  std::vector<int64_t> output_of_input;  // the node's input i is output output_of_input[i] of fn

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(x.defined(), "activation checkpointing: the block was already recomputed (backward ran twice; "
                             "retain_graph is not supported)");
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    std::vector<torch::Tensor> outputs;
    torch::Tensor input;
    {
      const torch::Tensor rest_of_run = generator.get_state();
      const AutocastState around = AutocastState::now();
      generator.set_state(generator_state);
      autocast.set();
      torch::AutoGradMode grad_on(true);
      input = x.detach();
      if (x_needs_grad) input.requires_grad_(true);
      try {
        outputs = fn(input, true);
      } catch (...) {
        generator.set_state(rest_of_run);
        around.set();
        throw;
      }
      generator.set_state(rest_of_run);
      around.set();
    }
    std::vector<torch::Tensor> ys, dys;
    for (size_t i = 0; i < grads.size(); ++i) {
      const torch::Tensor& y = outputs.at(size_t(output_of_input[i]));
      if (grads[i].defined() && y.defined() && y.requires_grad()) ys.push_back(y), dys.push_back(grads[i]);
    }
    std::vector<torch::Tensor> targets;
    if (x_needs_grad) targets.push_back(input);
    targets.insert(targets.end(), params.begin(), params.end());
    variable_list result(1 + params.size());
    if (!ys.empty() && !targets.empty()) {
      variable_list g = torch::autograd::grad(ys, targets, dys, /*retain_graph=*/false, /*create_graph=*/false,
                                              /*allow_unused=*/true);
      size_t k = 0;
      if (x_needs_grad) result[0] = g[k++];
      for (size_t p = 0; p < params.size(); ++p) result[1 + p] = g[k++];
    }
    release_variables();
    return result;
  }
  void release_variables() override {
    x.reset();
    generator_state.reset();
  }
  std::string name() const override { return "mole::CheckpointBackward"; }
};

}  // namespace

std::vector<torch::Tensor> checkpointed(const CheckpointFn& fn, const torch::Tensor& x,
                                        const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> trained;
  for (const torch::Tensor& p : params)
    if (p.requires_grad()) trained.push_back(p);
  if (!torch::GradMode::is_enabled() || (!x.requires_grad() && trained.empty())) return fn(x, false);

  auto node = c10::make_intrusive<CheckpointBackward>();
  node->fn = fn;
  node->x = x.detach();
  node->x_needs_grad = x.requires_grad();
  node->params = trained;
  node->generator_state = at::detail::getDefaultCPUGenerator().get_state();
  node->autocast = AutocastState::now();
  std::vector<torch::Tensor> outputs;
  {
    torch::NoGradGuard no_grad;
    outputs = fn(x, false);
  }
  node->set_next_edges(torch::autograd::collect_next_edges(x, trained));
  for (size_t i = 0; i < outputs.size(); ++i) {
    torch::Tensor& y = outputs[i];
    if (!y.defined() || !torch::autograd::isDifferentiableType(y.scalar_type())) continue;
    if (y.is_alias_of(x)) y = y.clone();  // an output that is its input's storage gets a history of its own
    torch::autograd::set_history(y, node);
    node->output_of_input.push_back(int64_t(i));
  }
  return outputs;
}

}  // namespace mole
