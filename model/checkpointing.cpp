#include "model/checkpointing.h"

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "core/activation_checkpoint.h"
#include "moe/routing_context.h"

namespace mole {

MOLE_ENUM_NAMES(ActivationCheckpointing, "activation checkpointing", {ActivationCheckpointing::kNone, "none"},
                {ActivationCheckpointing::kDecoder, "decoder"}, {ActivationCheckpointing::kAll, "all"})

namespace {

// Which balance losses a layer reported, in order, so that the checkpoint node's extra outputs can be put back
// into BalanceLosses: per layer its name and its term names (each layer's total comes first).
using LossLayout = std::vector<std::pair<std::string, std::vector<std::string>>>;

torch::Tensor checkpointed_layer(torch::nn::Module& layer, const LayerRun& run, const torch::Tensor& h) {
  std::vector<torch::Tensor> params;
  for (const torch::Tensor& p : layer.parameters())
    if (p.requires_grad()) params.push_back(p);
  if (!torch::GradMode::is_enabled() || (!h.requires_grad() && params.empty())) return run(h);

  const RoutingSinks* outer = RoutingSinkScope::current();
  const RoutingSinks first_sinks = outer ? *outer : RoutingSinks{};
  const RoutingContext* scope = RoutingScope::current();
  const std::optional<RoutingContext> context = scope ? std::optional<RoutingContext>(*scope) : std::nullopt;
  auto layout = std::make_shared<LossLayout>();

  CheckpointFn fn = [run, first_sinks, context, layout](const torch::Tensor& x, bool recomputing) {
    LayerLosses reported;
    RoutingSinks sinks = first_sinks;
    sinks.losses = &reported;
    if (recomputing) sinks.stats = nullptr, sinks.top1 = nullptr, sinks.families = nullptr;  // the first run counted them
    RoutingSinkScope sink_scope(sinks);
    std::optional<RoutingContext> c = context;
    std::optional<RoutingScope> routing_scope;
    if (c) routing_scope.emplace(&*c);
    std::vector<torch::Tensor> outputs{run(x)};
    if (!recomputing) layout->clear();
    for (const auto& [name, losses] : reported) {
      std::vector<std::string> terms;
      outputs.push_back(losses.total);
      for (const auto& [term, value] : losses.terms) terms.push_back(term), outputs.push_back(value);
      if (!recomputing) layout->emplace_back(name, std::move(terms));
    }
    return outputs;
  };
  const std::vector<torch::Tensor> outputs = checkpointed(fn, h, params);
  if (outer && outer->losses) {  // the losses, now outputs of the checkpoint node, to the caller's sink
    size_t k = 1;
    for (const auto& [name, terms] : *layout) {
      BalanceLosses losses;
      losses.total = outputs.at(k++);
      for (const std::string& term : terms) losses.terms[term] = outputs.at(k++);
      outer->losses->emplace_back(name, std::move(losses));
    }
  }
  return outputs[0];
}

LayerRunner runner() {
  return [](int64_t, torch::nn::Module& layer, const LayerRun& run, const torch::Tensor& h) {
    return checkpointed_layer(layer, run, h);
  };
}

}  // namespace

void set_activation_checkpointing(Llava& model, ActivationCheckpointing mode) {
  const bool decoder = mode != ActivationCheckpointing::kNone, vision = mode == ActivationCheckpointing::kAll;
  model->language_model->model->layer_runner = decoder ? runner() : LayerRunner();
  model->vision_tower->vision_model->encoder->layer_runner = vision ? runner() : LayerRunner();
}

}  // namespace mole
