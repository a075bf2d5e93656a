// Activation checkpointing: a block (a decoder or vision layer) run without keeping its activations, and run
// again in backward to differentiate it, as torch.utils.checkpoint does (trading one more forward for the
// memory of everything the block would save).
//
// checkpointed(fn, x, params) runs fn(x, false) without a graph and hangs its outputs on one autograd node whose
// inputs are x and `params` (the block's tensors that need gradients). Its backward sets the CPU generator and
// the autocast state back to what they were before the first run (so dropout masks and routing noise repeat),
// reruns fn(x, true) with the graph on, differentiates those outputs with the incoming gradients, and puts the
// generator back where the rest of the run left it. Because `params` are inputs of the node, the block's
// parameters get gradients even when x needs none (the first adapted layer above a frozen stack).
// Several outputs are allowed: a layer returns its hidden state and the balance losses it computed, so those
// losses' gradients flow through the recomputation as well.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

namespace mole {

// (x, recomputing) -> outputs; a pure function of x, the parameters and the generator's state. `recomputing` is
// true in the backward run, where side effects (routing statistics) must not happen twice.
using CheckpointFn = std::function<std::vector<torch::Tensor>(const torch::Tensor& x, bool recomputing)>;

// fn(x, false)'s outputs, differentiable as if fn had run with the graph on. Without grad mode, or when neither
// x nor any of `params` needs a gradient, simply fn(x, false).
std::vector<torch::Tensor> checkpointed(const CheckpointFn& fn, const torch::Tensor& x,
                                        const std::vector<torch::Tensor>& params);

// The hook a stack of layers (the LLaMA decoder, the CLIP encoder) offers the model above it: `run(h)` is
// layer `index` (`layer`) applied to h. Unset, each layer runs directly; the model sets one to checkpoint.
using LayerRun = std::function<torch::Tensor(const torch::Tensor& h)>;
using LayerRunner =
    std::function<torch::Tensor(int64_t index, torch::nn::Module& layer, const LayerRun& run, const torch::Tensor& h)>;

}  // namespace mole
