// Fused CPU kernels for the elementwise parts of a LLaMA block: RMSNorm, the gated activation product
// act(g) * u of the SwiGLU FFN, and rotary position embeddings. Each is one autograd function with a
// hand-written backward that makes one pass over its tensors where the op-by-op form makes four to ten (and
// allocates as many temporaries), and saves only its inputs for the backward. They run for contiguous float32
// on the CPU (SiLU for the gated product); any other dtype, device or activation takes the op-by-op form, which
// is the same maths (namespace unfused, also what the tests compare with).
#pragma once

#include <utility>

#include <torch/types.h>

#include "core/activation.h"

namespace mole {

// weight * (x * rsqrt(mean(x^2, -1) + eps)), reduced in float32 (LLaMA's RMSNorm). x (..., D), weight (D).
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// act(gate) * up, both (..., F).
torch::Tensor gated_activation(Activation act, const torch::Tensor& gate, const torch::Tensor& up);

// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1) over the last dimension.
// x (B, T, H, Dh) (heads before the transpose to (B, H, T, Dh)); cos, sin (B, T, Dh), without gradient.
torch::Tensor rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// The gated product's kernels without autograd, for other hand-written backwards (the fused MoLE FFN): y =
// act(g) * u, and (dL/dg, dL/du) from dL/dy. Any activation and dtype; one pass for float32 SiLU on the CPU.
torch::Tensor gated_activation_forward(Activation act, const torch::Tensor& g, const torch::Tensor& u);
std::pair<torch::Tensor, torch::Tensor> gated_activation_backward(Activation act, const torch::Tensor& g,
                                                                  const torch::Tensor& u, const torch::Tensor& dy);
// d act(x) / dx applied to grad.
torch::Tensor activation_backward(Activation act, const torch::Tensor& grad, const torch::Tensor& x);

namespace unfused {  // the op-by-op forms (autograd through each op)
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
torch::Tensor gated_activation(Activation act, const torch::Tensor& gate, const torch::Tensor& up);
torch::Tensor rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
}  // namespace unfused

}  // namespace mole
