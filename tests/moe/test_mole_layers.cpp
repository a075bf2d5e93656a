// LoRA and both MoLE granularities against naive references: the formula evaluated token by token, and every
// fast path (dense, sparse) against the plain per-expert loop, outputs and gradients, in float64.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "language/llama_decoder.h"
#include "moe/lora.h"
#include "moe/mole_ffn.h"
#include "moe/mole_linear.h"
#include "moe/routing_context.h"
#include "tests/test_util.h"

using namespace mole;
using mole::test::max_abs_diff;

namespace {

// Random B (LoRA starts with B = 0, which would make every comparison trivially equal).
void randomize(torch::nn::Module& module, double std = 0.3) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters())
    if (p.key().find("router") == std::string::npos) p.value().normal_(0.0, std);
}

std::vector<torch::Tensor> grads_of(torch::nn::Module& module, const torch::Tensor& x) {
  std::vector<torch::Tensor> g;
  if (x.requires_grad()) g.push_back(x.grad().clone());
  for (auto& p : module.parameters())
    if (p.grad().defined()) g.push_back(p.grad().clone());
  return g;
}

void zero_grads(torch::nn::Module& module, torch::Tensor& x) {
  for (auto& p : module.parameters())
    if (p.grad().defined()) p.mutable_grad().zero_();
  if (x.grad().defined()) x.mutable_grad().zero_();
}

// Every dispatch of `dispatches` (set into `options`; the first is the reference) gives `want` from run(x), and the
// same gradients of x (when it has any) and of every parameter of `module` for a random upstream gradient. The
// random state is the same for every run, so noisy gating draws the same noise.
template <typename Run>
void check_dispatches(torch::nn::Module& module, MoleOptions& options, torch::Tensor& x, const torch::Tensor& want,
                      Run run,
                      std::vector<Dispatch> dispatches = {Dispatch::kNaive, Dispatch::kDense, Dispatch::kSparse}) {
  std::vector<std::vector<torch::Tensor>> grads;
  auto upstream = torch::randn(want.sizes(), torch::kFloat64);
  for (auto dispatch : dispatches) {
    INFO("dispatch " << enum_name(dispatch));
    zero_grads(module, x);
    options.dispatch(dispatch);
    torch::manual_seed(1234);
    auto y = run(x);
    CHECK(max_abs_diff(y, want) < 1e-6);  // float32 gates
    (y * upstream).sum().backward();
    grads.push_back(grads_of(module, x));
  }
  for (size_t i = 1; i < grads.size(); ++i) {
    REQUIRE(grads[i].size() == grads[0].size());
    for (size_t j = 0; j < grads[0].size(); ++j) CHECK(max_abs_diff(grads[i][j], grads[0][j]) < 1e-9);
  }
}

}  // namespace

TEST_CASE("LoRA: s * B A x, rsLoRA scale, merge and unmerge", "[unit][moe][lora]") {
  torch::manual_seed(0);
  for (bool rslora : {false, true}) {
    Linear base(LinearOptions(6, 5));
    auto lora = std::make_shared<LoraImpl>(LoraOptions(6, 5).rank(3).alpha(4.0).rslora(rslora));
    randomize(*lora);
    base->to(torch::kFloat64);
    lora->to(torch::kFloat64);
    base->attach(lora);
    double s = rslora ? 4.0 / std::sqrt(3.0) : 4.0 / 3.0;
    auto x = torch::randn({4, 6}, torch::kFloat64);
    auto want = torch::linear(x, base->weight, base->bias) +
                s * torch::matmul(torch::matmul(x, lora->lora_A->weight.t()), lora->lora_B->weight.t());
    CHECK(max_abs_diff(base(x), want) < 1e-12);
    auto before = base->weight.clone();
    base->merge();
    CHECK(max_abs_diff(base(x), want) < 1e-12);  // merged: the adapter lives in W
    base->unmerge();
    CHECK(max_abs_diff(base->weight, before) < 1e-12);
  }
}

TEST_CASE("linear-level MoLE equals the per-token formula and dense, sparse and naive agree with gradients",
          "[unit][moe][mole_linear]") {
  const int64_t n = 9, in = 6, out = 5;
  for (int64_t k : {1, 2, 3}) {
    for (bool shared : {false, true}) {
      INFO("top_k " << k << " shared " << shared);
      torch::manual_seed(10 + k);
      auto options = MoleOptions().n_experts(4).routing(RoutingOptions().top_k(k)).rank(2).alpha(3.0).shared_expert(shared);
      auto mole = std::make_shared<MoleLinearImpl>(MoleLinearOptions(in, out, options).layer_name("test"));
      randomize(*mole);
      mole->to(torch::kFloat64);
      mole->router->to(torch::kFloat32);  // the router stays float32
      {
        torch::NoGradGuard no_grad;
        mole->router->weight.normal_();
      }
      auto x = torch::randn({n, in}, torch::kFloat64).requires_grad_(true);
      auto routing = mole->router->forward(x, torch::zeros({n}, torch::kInt64));

      // Formula, token by token: sum_{i in TopK} G_i * s * B_i A_i x
      double s = mole->scale();
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < n; ++t) {
        auto y = torch::zeros({out}, torch::kFloat64);
        for (int64_t j = 0; j < k; ++j) {
          int64_t i = routing.topk_index[t][j].item<int64_t>();
          y = y + routing.topk_weight[t][j].to(torch::kFloat64) * s *
                      torch::mv(mole->lora_B[i], torch::mv(mole->lora_A[i], x[t]));
        }
        if (shared) y = y + mole->shared->delta(x[t].unsqueeze(0)).squeeze(0);
        rows.push_back(y);
      }
      auto want = torch::stack(rows).detach();

      // routes again on each call: same weights, same routing
      check_dispatches(*mole, mole->options.mole(), x, want, [&](const torch::Tensor& in) { return mole->delta(in); });
    }
  }
}

TEST_CASE("FFN-level MoLE equals the per-token formula and dense, sparse and naive agree with gradients",
          "[unit][moe][mole_ffn]") {
  const int64_t n = 8, d = 6, f = 10;
  TextConfig text;
  text.hidden_size = d;
  text.intermediate_size = f;
  for (int64_t k : {1, 2}) {
    for (bool shared : {false, true}) {
      INFO("top_k " << k << " shared " << shared);
      torch::manual_seed(20 + k);
      LlamaMlp mlp(text);
      mlp->to(torch::kFloat64);
      auto options = MoleOptions().n_experts(3).routing(RoutingOptions().top_k(k)).rank(2).alpha(2.0).shared_expert(shared);
      auto ffn = std::make_shared<MoleFfnImpl>(MoleFfnOptions(d, f, options).layer_name("test.mlp"));
      randomize(*ffn);
      ffn->to(torch::kFloat64);
      ffn->router->to(torch::kFloat32);
      {
        torch::NoGradGuard no_grad;
        ffn->router->weight.normal_();
      }
      mlp->attach(ffn);
      auto x = torch::randn({n, d}, torch::kFloat64).requires_grad_(true);
      auto routing = ffn->router->forward(x, torch::zeros({n}, torch::kInt64));

      // Formula: y = sum_{i in TopK} G_i (W_d' h_i + dD_i h_i), h_i = act(W_g' x + dG_i x) * (W_u' x + dU_i x),
      // W' = W + shared LoRA.
      double s = ffn->scale();
      auto lr = [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& v) {
        return s * torch::mv(b, torch::mv(a, v));
      };
      std::vector<torch::Tensor> rows;
      for (int64_t t = 0; t < n; ++t) {
        auto xt = x[t].detach();
        auto g0 = torch::mv(mlp->gate_proj->weight, xt), u0 = torch::mv(mlp->up_proj->weight, xt);
        if (shared) {
          g0 = g0 + ffn->shared_gate->delta(xt.unsqueeze(0)).squeeze(0);
          u0 = u0 + ffn->shared_up->delta(xt.unsqueeze(0)).squeeze(0);
        }
        auto y = torch::zeros({d}, torch::kFloat64);
        for (int64_t j = 0; j < k; ++j) {
          int64_t i = routing.topk_index[t][j].item<int64_t>();
          auto h = torch::silu(g0 + lr(ffn->gate_A[i], ffn->gate_B[i], xt)) * (u0 + lr(ffn->up_A[i], ffn->up_B[i], xt));
          auto o = torch::mv(mlp->down_proj->weight, h) + lr(ffn->down_A[i], ffn->down_B[i], h);
          if (shared) o = o + ffn->shared_down->delta(h.unsqueeze(0)).squeeze(0);
          y = y + routing.topk_weight[t][j].to(torch::kFloat64) * o;
        }
        rows.push_back(y);
      }
      auto want = torch::stack(rows).detach();

      // the MLP block hands its computation to the adapter
      check_dispatches(*ffn, ffn->options.mole(), x, want, [&](const torch::Tensor& in) { return mlp(in); },
                       {Dispatch::kNaive, Dispatch::kDense, Dispatch::kSparse, Dispatch::kFused});
    }
  }
}

namespace {

// An FFN-level MoLE on a small float64 SwiGLU block with random LoRA factors and router (float32).
struct FfnCase {
  LlamaMlp mlp = nullptr;
  std::shared_ptr<MoleFfnImpl> ffn;
  FfnCase(int64_t d, int64_t f, const MoleOptions& options) {
    TextConfig text;
    text.hidden_size = d;
    text.intermediate_size = f;
    mlp = LlamaMlp(text);
    mlp->to(torch::kFloat64);
    ffn = std::make_shared<MoleFfnImpl>(MoleFfnOptions(d, f, options).layer_name("test.mlp"));
    randomize(*ffn);
    ffn->to(torch::kFloat64);
    ffn->router->to(torch::kFloat32);
    {
      torch::NoGradGuard no_grad;
      ffn->router->weight.normal_();
      if (ffn->router->noise_weight.defined()) ffn->router->noise_weight.normal_(0.0, 0.5);
    }
    mlp->attach(ffn);
  }
  // The naive per-expert loop's output, with the random state every checked run starts from.
  torch::Tensor naive(const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    ffn->options.mole().dispatch(Dispatch::kNaive);
    torch::manual_seed(1234);
    return mlp(x);
  }
};

}  // namespace

TEST_CASE("fused FFN-level MoLE equals the naive loop for every gating rule, top-k, empty experts, shared expert",
          "[unit][moe][mole_ffn]") {
  const int64_t n = 11, d = 6, f = 10, e = 4;
  struct Rule {
    Gating gating;
    bool renormalize;
  };
  for (Rule rule : {Rule{Gating::kTopkSoftmax, false}, Rule{Gating::kSoftmaxTopk, false},
                    Rule{Gating::kSoftmaxTopk, true}, Rule{Gating::kNoisyTopk, false}}) {
    for (int64_t k = 1; k <= e; ++k) {
      for (bool shared : {false, true}) {
        INFO("gating " << enum_name(rule.gating) << " renormalize " << rule.renormalize << " top_k " << k
                       << " shared " << shared);
        torch::manual_seed(100 + k);
        auto routing = RoutingOptions().top_k(k).gating(rule.gating).renormalize(rule.renormalize);
        FfnCase c(d, f, MoleOptions().n_experts(e).routing(routing).rank(3).alpha(5.0).shared_expert(shared));
        auto x = torch::randn({n, d}, torch::kFloat64).requires_grad_(true);
        check_dispatches(*c.ffn, c.ffn->options.mole(), x, c.naive(x), [&](const torch::Tensor& in) { return c.mlp(in); },
                         {Dispatch::kNaive, Dispatch::kFused});
      }
    }
  }
  // Experts 2-3 serve image tokens and every token is text: they get no tokens (and zero gradients).
  for (int64_t k = 1; k <= 3; ++k) {
    INFO("empty experts, top_k " << k);
    torch::manual_seed(200 + k);
    auto routing = RoutingOptions().top_k(k).mode(RoutingMode::kModalityGrouped).expert_modality({0, 0, 1, 1, -1});
    FfnCase c(d, f, MoleOptions().n_experts(5).routing(routing).rank(2).alpha(2.0));
    auto x = torch::randn({n, d}, torch::kFloat64).requires_grad_(true);
    check_dispatches(*c.ffn, c.ffn->options.mole(), x, c.naive(x), [&](const torch::Tensor& in) { return c.mlp(in); },
                     {Dispatch::kNaive, Dispatch::kFused});
    CHECK(c.ffn->gate_B.grad()[2].abs().max().item<double>() == 0.0);
    CHECK(c.ffn->down_A.grad()[3].abs().max().item<double>() == 0.0);
  }
  // An input without gradient (a first adapted layer behind frozen ones): the parameters' gradients still agree.
  {
    torch::manual_seed(300);
    FfnCase c(d, f, MoleOptions().n_experts(e).routing(RoutingOptions().top_k(2)).rank(2));
    auto x = torch::randn({n, d}, torch::kFloat64);
    check_dispatches(*c.ffn, c.ffn->options.mole(), x, c.naive(x), [&](const torch::Tensor& in) { return c.mlp(in); },
                     {Dispatch::kNaive, Dispatch::kFused});
  }
}

TEST_CASE("MoLE layers read token modality from the routing scope and record statistics",
          "[unit][moe][mole_linear]") {
  torch::manual_seed(0);
  BalanceLossOptions aux;
  aux.switch_aux = 0.01;
  auto options = MoleOptions().n_experts(4).rank(2).routing(
      RoutingOptions().top_k(1).mode(RoutingMode::kModalityGrouped).expert_modality({0, 0, 1, 1}))
                     .losses(aux);
  MoleLinear mole(MoleLinearOptions(6, 4, options).layer_name("layer.q_proj"));
  auto x = torch::randn({2, 5, 6});
  RoutingStats stats;
  std::vector<std::pair<std::string, BalanceLosses>> losses;
  RoutingContext context;
  context.modality = torch::tensor({0, 1, 1, 0, 0, 1, 1, 1, 0, 0}, torch::kInt64);
  context.valid = torch::ones({10}, torch::kBool);
  {
    RoutingScope scope(&context);
    RoutingSinkScope record(RoutingSinks{&stats, &losses});
    mole->delta(x);
  }
  REQUIRE(losses.size() == 1);
  CHECK(losses[0].first == "layer.q_proj");
  auto table = stats.to_json()["layers"]["layer.q_proj"]["prefill"];
  // text tokens only on experts 0-1, image tokens only on 2-3
  CHECK(table["text"]["top1"][2] == 0);
  CHECK(table["text"]["top1"][3] == 0);
  CHECK(table["image"]["top1"][0] == 0);
  CHECK(table["image"]["top1"][1] == 0);
  CHECK(table["text"]["tokens"] == 5);
  CHECK(table["image"]["tokens"] == 5);
}

TEST_CASE("balance losses of all MoLE layers are collected per layer and summed apart", "[unit][moe][balance]") {
  torch::manual_seed(1);
  BalanceLossOptions aux;
  aux.switch_aux = 0.5;
  aux.z_loss = 0.1;
  auto options = MoleOptions().n_experts(4).routing(RoutingOptions().top_k(2)).rank(2).losses(aux);
  MoleLinear first(MoleLinearOptions(6, 6, options).layer_name("l0")),
      second(MoleLinearOptions(6, 3, options).layer_name("l1"));
  auto x = torch::randn({7, 6});
  LayerLosses losses;
  {
    RoutingSinkScope record(RoutingSinks{nullptr, &losses});
    second->delta(x + first->delta(x));
  }
  REQUIRE(losses.size() == 2);
  CHECK(losses[0].first == "l0");
  CHECK(losses[1].first == "l1");
  auto sum = sum_over_layers(losses);
  for (const char* term : {"switch_aux", "z_loss"})
    CHECK(sum.terms.at(term).item<double>() ==
          Approx(losses[0].second.terms.at(term).item<double>() + losses[1].second.terms.at(term).item<double>()));
  CHECK(sum.total.item<double>() ==
        Approx(0.5 * sum.terms.at("switch_aux").item<double>() + 0.1 * sum.terms.at("z_loss").item<double>()));
  CHECK(sum_over_layers({}).total.item<double>() == 0.0);
}
