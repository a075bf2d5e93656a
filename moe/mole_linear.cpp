#include "moe/mole_linear.h"

#include <cmath>

#include <torch/torch.h>

namespace mole {

MoleLinearImpl::MoleLinearImpl(int64_t in, int64_t out, const MoleOptions& options_, std::string name)
    : in_features(in), out_features(out), options(options_), layer_name(std::move(name)) {
  int64_t e = options.n_experts(), r = options.rank();
  TORCH_CHECK(e >= 1 && r >= 1, "MoLE: n_experts and rank must be >= 1");
  router = register_module("router", Router(options.router(in)));
  lora_A = register_parameter("lora_A", torch::empty({e, r, in}));
  lora_B = register_parameter("lora_B", torch::empty({e, out, r}));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
  if (options.shared_expert())
    shared = register_module("shared", Lora(LoraOptions(in, out)
                                                 .rank(r)
                                                 .alpha(options.alpha())
                                                 .dropout(options.dropout())
                                                 .rslora(options.rslora())));
  if (!NoInitGuard::active()) reset_parameters();
}

void MoleLinearImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < options.n_experts(); ++i) torch::nn::init::kaiming_uniform_(lora_A[i], std::sqrt(5.0));
  lora_B.zero_();  // every expert starts as the identity change, as LoRA's B
}

torch::Tensor MoleLinearImpl::routed_delta(const torch::Tensor& x, const Routing& routing, Dispatch dispatch) {
  int64_t n = x.size(0), e = options.n_experts(), r = options.rank();
  auto dtype = lora_A.scalar_type();
  auto xd = x.to(dtype);  // (N, I), dropout already applied
  double s = scale();
  switch (dispatch) {
    case Dispatch::kDense:
    case Dispatch::kAuto: {
      auto h = torch::matmul(xd, lora_A.reshape({e * r, in_features}).t());                      // (N, E*R)
      h = (h.view({n, e, r}) * routing.gates.to(dtype).unsqueeze(-1)).view({n, e * r});           // gated
      auto b_all = lora_B.permute({1, 0, 2}).reshape({out_features, e * r});                      // (O, E*R)
      return torch::matmul(h, b_all.t()) * s;                                                     // (N, O)
    }
    case Dispatch::kSparse: {
      auto groups = group_by_expert(routing);
      auto xs = xd.index_select(0, groups.token);  // (N*K, I), grouped by expert
      std::vector<torch::Tensor> parts;
      for (int64_t i = 0; i < e; ++i) {
        int64_t begin = groups.offsets[i], count = groups.offsets[i + 1] - begin;
        if (count == 0) continue;
        auto xe = xs.narrow(0, begin, count);
        parts.push_back(torch::matmul(torch::matmul(xe, lora_A[i].t()), lora_B[i].t()));  // (count, O)
      }
      auto ys = torch::cat(parts, 0) * (groups.weight.to(dtype) * s).unsqueeze(1);
      return torch::zeros({n, out_features}, ys.options()).index_add(0, groups.token, ys);
    }
    case Dispatch::kNaive: {
      auto y = torch::zeros({n, out_features}, xd.options());
      for (int64_t i = 0; i < e; ++i)  // every expert on every token, weighted by its (mostly zero) gate
        y = y + routing.gates.select(1, i).to(dtype).unsqueeze(1) *
                    torch::matmul(torch::matmul(xd, lora_A[i].t()), lora_B[i].t()) * s;
      return y;
    }
  }
  return {};
}

torch::Tensor MoleLinearImpl::delta(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == in_features, "MoLE ", layer_name, ": expected inputs of size ", in_features, ", got ",
              x.sizes());
  auto shape = x.sizes().vec();
  auto xf = x.reshape({-1, in_features});  // (N, I)
  Routing routing = route_and_record(*router, xf, layer_name, options.losses());
  auto y = routed_delta(dropout(xf), routing, options.resolved_dispatch());
  if (shared) y = y + shared->delta(xf).to(y.scalar_type());
  shape.back() = out_features;
  return y.to(x.scalar_type()).view(shape);
}

}  // namespace mole
