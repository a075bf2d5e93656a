#include "core/fused_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/autograd.h>
#include <torch/torch.h>

namespace mole {

namespace unfused {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  // hidden = x.float(); hidden = hidden * rsqrt(hidden.pow(2).mean(-1, keepdim) + eps); weight * hidden.to(dtype)
  auto h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

torch::Tensor gated_activation(Activation act, const torch::Tensor& gate, const torch::Tensor& up) {
  return apply_activation(act, gate) * up;
}

torch::Tensor rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto halves = x.chunk(2, -1);  // (a split: its backward is one cat, where a slice's allocates the whole tensor)
  auto rotated = torch::cat({-halves[1], halves[0]}, -1);
  return x * cos.unsqueeze(2) + rotated * sin.unsqueeze(2);
}

}  // namespace unfused

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Each kernel is written once (NAME_body, inlined everywhere) and built three times: for AVX-512, for AVX2 + FMA
// and for the baseline; NAME() calls the build that LibTorch's own CPU capability allows (at::get_cpu_capability,
// which ATEN_CPU_CAPABILITY can lower). GCC's target_clones would pick by its own CPUID reading, which on some
// virtual machines (no OSXSAVE bit) finds no AVX at all. The file is built with -fno-trapping-math
// (CMakeLists.txt), without which GCC keeps the branches of a clamp and vectorises nothing.
#define MOLE_BODY __attribute__((always_inline)) inline

int simd_level() {
  static const int level = [] {
    const std::string capability = at::get_cpu_capability();
    return capability == "AVX512" ? 2 : capability == "AVX2" ? 1 : 0;
  }();
  return level;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define MOLE_SIMD_VARIANTS(ret, name, params, args)                                            \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma"))) ret name##_avx512 params { \
    return name##_body args;                                                                   \
  }                                                                                            \
  __attribute__((target("avx2,fma"))) ret name##_avx2 params { return name##_body args; }      \
  ret name##_base params { return name##_body args; }                                          \
  ret name params {                                                                            \
    switch (simd_level()) {                                                                    \
      case 2: return name##_avx512 args;                                                       \
      case 1: return name##_avx2 args;                                                         \
      default: return name##_base args;                                                        \
    }                                                                                          \
  }
#else
#define MOLE_SIMD_VARIANTS(ret, name, params, args) \
  ret name params { return name##_body args; }
#endif

constexpr int64_t kGrain = 1 << 15;  // elements per parallel chunk

bool fast_path(std::initializer_list<const torch::Tensor*> tensors) {
  for (const torch::Tensor* t : tensors)
    if (!t->device().is_cpu() || t->scalar_type() != torch::kFloat32) return false;
  return true;
}

int64_t rows_per_chunk(int64_t width) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, width)); }

// ---- RMSNorm ----

// y = w * (x * r) with r = 1 / sqrt(mean(x^2) + eps); returns r.
MOLE_BODY float rms_norm_row_body(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
                                int64_t d, float eps) {
  float acc[16] = {0};  // sixteen partial sums: a vector's worth of lanes without -ffast-math
  int64_t i = 0;
  for (; i + 16 <= d; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += x[i + j] * x[i + j];
  float ss = 0;
  for (int j = 0; j < 16; ++j) ss += acc[j];
  for (; i < d; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / float(d) + eps);
  for (int64_t k = 0; k < d; ++k) y[k] = w[k] * (x[k] * r);
  return r;
}
MOLE_SIMD_VARIANTS(float, rms_norm_row, (const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, int64_t d, float eps), (x, w, y, d, eps))

// dx = r * (g - x * r^2 * sum(g * x) / D), g = dy * w.
MOLE_BODY void rms_norm_backward_row_body(const float* __restrict__ x, const float* __restrict__ w,
                                       const float* __restrict__ dy, float r, float* __restrict__ dx, int64_t d) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= d; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += dy[i + j] * w[i + j] * x[i + j];
  float dot = 0;
  for (int j = 0; j < 16; ++j) dot += acc[j];
  for (; i < d; ++i) dot += dy[i] * w[i] * x[i];
  const float c = r * r * dot / float(d);
  for (int64_t k = 0; k < d; ++k) dx[k] = r * (dy[k] * w[k] - x[k] * c);
}
MOLE_SIMD_VARIANTS(void, rms_norm_backward_row, (const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ dy, float r, float* __restrict__ dx, int64_t d), (x, w, dy, r, dx, d))

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& weight,
                               double eps) {
    auto x = x_in.contiguous();
    auto w = weight.contiguous();
    const int64_t d = x.size(-1), rows = x.numel() / d;
    auto y = torch::empty_like(x);
    auto rstd = torch::empty({rows}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, rows_per_chunk(d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) rp[r] = rms_norm_row(xp + r * d, wp, yp + r * d, d, float(eps));
    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &w = saved[1], &rstd = saved[2];
    auto dy = grad_out[0].contiguous();
    const int64_t d = x.size(-1), rows = x.numel() / d;
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = torch::empty_like(x);
      const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *gp = dy.data_ptr<float>(),
                  *rp = rstd.data_ptr<float>();
      float* dxp = dx.data_ptr<float>();
      at::parallel_for(0, rows, rows_per_chunk(d), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) rms_norm_backward_row(xp + r * d, wp, gp + r * d, rp[r], dxp + r * d, d);
      });
    }
    if (ctx->needs_input_grad(1))  // a trainable norm weight: sum over rows of dy * x * r
      dw = (dy.view({rows, d}) * x.view({rows, d}) * rstd.unsqueeze(1)).sum(0);
    return {dx, dw, torch::Tensor()};
  }
};

// ---- SiLU(g) * u ----

// exp(x) for x in float32, Cephes' polynomial after a reduction by powers of two (relative error < 2e-7), written
// so that it vectorises: rounding by the 1.5 * 2^23 trick, the power of two built in the exponent bits.
MOLE_BODY float exp_vectorisable(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float n = x * 1.44269504088896341f + 12582912.0f;
  n -= 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

MOLE_BODY void silu_mul_chunk_body(const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y,
                                int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + exp_vectorisable(-g[i]));
    y[i] = g[i] * s * u[i];
  }
}
MOLE_SIMD_VARIANTS(void, silu_mul_chunk, (const float* __restrict__ g, const float* __restrict__ u, float* __restrict__ y, int64_t n), (g, u, y, n))

// d/dg silu(g) u = u s (1 + g (1 - s)), d/du = silu(g), with s = sigmoid(g).
MOLE_BODY void silu_mul_backward_chunk_body(const float* __restrict__ g, const float* __restrict__ u,
                                         const float* __restrict__ dy, float* __restrict__ dg,
                                         float* __restrict__ du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float s = 1.0f / (1.0f + exp_vectorisable(-g[i]));
    dg[i] = dy[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    du[i] = dy[i] * g[i] * s;
  }
}
MOLE_SIMD_VARIANTS(void, silu_mul_backward_chunk, (const float* __restrict__ g, const float* __restrict__ u, const float* __restrict__ dy, float* __restrict__ dg, float* __restrict__ du, int64_t n), (g, u, dy, dg, du, n))

bool silu_fast_path(Activation act, const torch::Tensor& g, const torch::Tensor& u) {
  return act == Activation::kSilu && fast_path({&g, &u}) && g.sizes() == u.sizes();
}

struct GatedActivationFunction : public torch::autograd::Function<GatedActivationFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up,
                               int64_t act_id) {
    auto g = gate.contiguous(), u = up.contiguous();
    ctx->save_for_backward({g, u});
    ctx->saved_data["act"] = act_id;
    return gated_activation_forward(static_cast<Activation>(act_id), g, u);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto [dg, du] = gated_activation_backward(static_cast<Activation>(ctx->saved_data["act"].toInt()), saved[0],
                                              saved[1], grad_out[0]);
    return {ctx->needs_input_grad(0) ? dg : torch::Tensor(), ctx->needs_input_grad(1) ? du : torch::Tensor(),
            torch::Tensor()};
  }
};

// ---- rotary embedding ----

// One (b, t) position: its H heads of Dh = 2 * half; sign -1 applies the transpose (the backward).
MOLE_BODY void rotary_position_body(const float* __restrict__ x, const float* __restrict__ c,
                                 const float* __restrict__ s, float* __restrict__ y, int64_t heads, int64_t half,
                                 float sign) {
  for (int64_t h = 0; h < heads; ++h) {
    const float* xh = x + h * 2 * half;
    float* yh = y + h * 2 * half;
    if (sign > 0) {
      for (int64_t i = 0; i < half; ++i) {
        yh[i] = xh[i] * c[i] - xh[i + half] * s[i];
        yh[i + half] = xh[i + half] * c[i + half] + xh[i] * s[i + half];
      }
    } else {
      for (int64_t i = 0; i < half; ++i) {
        yh[i] = xh[i] * c[i] + xh[i + half] * s[i + half];
        yh[i + half] = xh[i + half] * c[i + half] - xh[i] * s[i];
      }
    }
  }
}
MOLE_SIMD_VARIANTS(void, rotary_position, (const float* __restrict__ x, const float* __restrict__ c, const float* __restrict__ s, float* __restrict__ y, int64_t heads, int64_t half, float sign), (x, c, s, y, heads, half, sign))

torch::Tensor rotary_apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, float sign) {
  const int64_t positions = x.size(0) * x.size(1), heads = x.size(2), dh = x.size(3);
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, positions, rows_per_chunk(heads * dh), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      rotary_position(xp + p * heads * dh, cp + p * dh, sp + p * dh, yp + p * heads * dh, heads, dh / 2, sign);
  });
  return y;
}

struct RotaryFunction : public torch::autograd::Function<RotaryFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
    auto c = cos.contiguous(), s = sin.contiguous();
    ctx->save_for_backward({c, s});
    return rotary_apply(x.contiguous(), c, s, 1.0f);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    return {rotary_apply(grad_out[0].contiguous(), saved[0], saved[1], -1.0f), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (!fast_path({&x, &weight}) || weight.dim() != 1 || x.size(-1) != weight.size(0))
    return unfused::rms_norm(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor activation_backward(Activation act, const torch::Tensor& grad, const torch::Tensor& x) {
  switch (act) {
    case Activation::kSilu: return at::silu_backward(grad, x);
    case Activation::kGelu: return at::gelu_backward(grad, x, "none");
    case Activation::kGeluTanh: return at::gelu_backward(grad, x, "tanh");
    case Activation::kRelu: return at::threshold_backward(grad, x, 0);
    case Activation::kQuickGelu: {  // d/dx x sigmoid(a x) = sig + a x sig (1 - sig)
      auto sig = torch::sigmoid(1.702 * x);
      return grad * (sig + 1.702 * x * sig * (1 - sig));
    }
  }
  TORCH_CHECK(false, "activation_backward: unknown activation");
}

torch::Tensor gated_activation_forward(Activation act, const torch::Tensor& g_in, const torch::Tensor& u_in) {
  if (!silu_fast_path(act, g_in, u_in)) return apply_activation(act, g_in).mul_(u_in);
  auto g = g_in.contiguous(), u = u_in.contiguous();
  auto y = torch::empty_like(g);
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    silu_mul_chunk(gp + begin, up + begin, yp + begin, end - begin);
  });
  return y;
}

std::pair<torch::Tensor, torch::Tensor> gated_activation_backward(Activation act, const torch::Tensor& g_in,
                                                                  const torch::Tensor& u_in, const torch::Tensor& dy_in) {
  if (!silu_fast_path(act, g_in, u_in) || dy_in.scalar_type() != g_in.scalar_type() || dy_in.sizes() != g_in.sizes())
    return {activation_backward(act, dy_in * u_in, g_in), dy_in * apply_activation(act, g_in)};
  auto g = g_in.contiguous(), u = u_in.contiguous(), dy = dy_in.contiguous();
  auto dg = torch::empty_like(g), du = torch::empty_like(u);
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>(), *dyp = dy.data_ptr<float>();
  float *dgp = dg.data_ptr<float>(), *dup = du.data_ptr<float>();
  at::parallel_for(0, g.numel(), kGrain, [&](int64_t begin, int64_t end) {
    silu_mul_backward_chunk(gp + begin, up + begin, dyp + begin, dgp + begin, dup + begin, end - begin);
  });
  return {dg, du};
}

torch::Tensor gated_activation(Activation act, const torch::Tensor& gate, const torch::Tensor& up) {
  if (!silu_fast_path(act, gate, up)) return unfused::gated_activation(act, gate, up);
  return GatedActivationFunction::apply(gate, up, static_cast<int64_t>(act));
}

torch::Tensor rotary_embedding(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 3 && cos.sizes() == sin.sizes() && cos.size(0) == x.size(0) &&
                  cos.size(1) == x.size(1) && cos.size(2) == x.size(3) && x.size(3) % 2 == 0,
              "rotary_embedding: x must be (B, T, H, Dh) with Dh even and cos, sin (B, T, Dh); got x ", x.sizes(),
              ", cos ", cos.sizes(), ", sin ", sin.sizes());
  TORCH_CHECK(!cos.requires_grad() && !sin.requires_grad(), "rotary_embedding: cos and sin take no gradient");
  if (!fast_path({&x, &cos, &sin})) return unfused::rotary_embedding(x, cos, sin);
  return RotaryFunction::apply(x, cos, sin);
}

}  // namespace mole
