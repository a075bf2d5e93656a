#include "core/dropout.h"

#include <cstdint>
#include <limits>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/torch.h>

namespace mole {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A 32-bit integer hash with full avalanche (Wellons' lowbias32); two rounds with the seed's halves in between.
inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

constexpr int64_t kGrain = 1 << 15;  // elements per parallel chunk

struct DropoutFunction : public torch::autograd::Function<DropoutFunction> {
  static variable_list forward(AutogradContext* ctx, torch::Tensor x, double p) {
    auto [out, keep] = dropout_forward(x, p);
    ctx->saved_data["keep"] = keep;
    ctx->saved_data["p"] = p;
    return {out};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto keep = ctx->saved_data["keep"].toTensor();
    auto grad_in = torch::empty(grad_out[0].sizes(), grad_out[0].options());
    dropout_backward_into(grad_in, grad_out[0], keep, ctx->saved_data["p"].toDouble(), /*accumulate=*/false);
    return {grad_in, torch::Tensor()};
  }
};

}  // namespace

std::pair<torch::Tensor, torch::Tensor> dropout_forward(const torch::Tensor& x, double p) {
  const double scale = 1.0 / (1.0 - p);
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  auto keep = torch::empty(input.sizes(), input.options().dtype(torch::kUInt8));
  const auto seed = static_cast<uint64_t>(
      torch::randint(std::numeric_limits<int64_t>::max(), {1}, torch::kInt64).item<int64_t>());
  const uint32_t seed_lo = uint32_t(seed), seed_hi = uint32_t(seed >> 32);
  const uint32_t threshold = uint32_t(p * 4294967296.0);  // dropped when the hash is below
  const int64_t n = input.numel();
  uint8_t* k = keep.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, input.scalar_type(), "mole_dropout", [&] {
    const scalar_t* in = input.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto s = static_cast<scalar_t>(scale);
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const uint32_t h = mix32(mix32(uint32_t(i) ^ seed_lo) + (seed_hi ^ uint32_t(i >> 32)));
        const uint8_t kept = h >= threshold;
        k[i] = kept;
        o[i] = kept ? in[i] * s : scalar_t(0);
      }
    });
  });
  return {out, keep};
}

void dropout_backward_into(torch::Tensor& acc, const torch::Tensor& grad_in, const torch::Tensor& keep, double p,
                           bool accumulate) {
  TORCH_CHECK(acc.is_contiguous() && acc.numel() == grad_in.numel() && keep.numel() == grad_in.numel() &&
                  acc.scalar_type() == grad_in.scalar_type(),
              "dropout_backward_into: acc (contiguous) ", acc.sizes(), ", grad ", grad_in.sizes(), " and keep ",
              keep.sizes(), " must match");
  auto grad = grad_in.contiguous();
  const int64_t n = grad.numel();
  const uint8_t* k = keep.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, grad.scalar_type(), "mole_dropout_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* o = acc.data_ptr<scalar_t>();
    const auto s = static_cast<scalar_t>(1.0 / (1.0 - p));
    at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
      if (accumulate)
        for (int64_t i = begin; i < end; ++i) o[i] += k[i] ? g[i] * s : scalar_t(0);
      else
        for (int64_t i = begin; i < end; ++i) o[i] = k[i] ? g[i] * s : scalar_t(0);
    });
  });
}

torch::Tensor fast_dropout(const torch::Tensor& x, double p, bool training) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0.0) return x;
  if (!x.device().is_cpu()) return torch::dropout(x, p, true);
  return DropoutFunction::apply(x, p)[0].view(x.sizes());
}

DropoutImpl::DropoutImpl(double p_) : p(p_) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
}

}  // namespace mole
