// bench_moe: what a MoLE adapter costs next to plain LoRA on one SwiGLU FFN block, forward + backward per step.
// Variants: the frozen FFN alone; plain LoRA on gate/up/down; FFN-level MoLE (shared W_g x, W_u x and a single
// down-projection on the gated sum); linear-level MoLE on gate/up/down; and the naive per-expert loop (each
// expert a whole FFN). The input carries a gradient, as inside a model, so the frozen weights' backward for the
// activations is counted too. FFN-level MoLE runs twice: its default (the fused autograd function) and the same
// computation in plain autograd ops ("sparse"). Last line: ratio_mole_vs_lora=X ratio_naive_vs_mole=Y (from the
// first shape). All cores by default; the 7B shape at 256 tokens, enough rows that its GEMMs are compute-bound.
// With --contrastive C, one more variant: FFN-level MoLE inside a loss sink with the contrastive balance loss on
// (coefficient C), its term added to the step's loss, to read what that loss costs beside the plain MoLE line.
//
//   build/bench_moe                          LLaMA-7B FFN (4096 x 11008, rank 16) and the tiny demo shape
//   build/bench_moe --hidden 512 --ffn 1408 --tokens 256 --rank 8 --experts 8 --top-k 2 --reps 5
//   build/bench_moe --contrastive 0.01
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "core/host_memory.h"
#include "language/llama_decoder.h"
#include "moe/lora.h"
#include "moe/mole_ffn.h"
#include "moe/mole_linear.h"
#include "moe/routing_context.h"

using namespace mole;

namespace {

struct Shape {
  std::string name;
  int64_t hidden, ffn, tokens, rank, experts, top_k;
};

double median_ms(const std::function<void()>& step, int reps) {
  step();  // warm-up: allocator, oneDNN primitive caches
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    step();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Random B so that adapters do real work (their B starts at zero); small, so activations stay tame.
void randomize(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.parameters()) p.normal_(0.0, 0.02);
}

struct Result {
  std::string variant;
  double ms;
};

std::string g_trace_prefix;  // --trace: one profiled step per variant, as a chrome trace (bench/trace_ops.py reads it)
double g_contrastive = 0.0;  // --contrastive: the coefficient of the extra variant; 0 = no such variant

std::vector<Result> run_shape(const Shape& s, int reps, bool with_naive) {
  torch::manual_seed(0);
  TextConfig text;
  text.hidden_size = s.hidden;
  text.intermediate_size = s.ffn;
  auto mole = MoleOptions().n_experts(s.experts).routing(RoutingOptions().top_k(s.top_k)).rank(s.rank).alpha(2.0 * s.rank);
  auto lora_options = [&](int64_t in, int64_t out) { return LoraOptions(in, out).rank(s.rank).alpha(2.0 * s.rank); };
  auto x = torch::randn({s.tokens, s.hidden}) * 0.5;

  std::vector<Result> results;
  // with_losses: inside a loss sink, the layers' balance losses added to the step's loss (as the trainer does)
  auto bench = [&](const std::string& variant, const std::function<void(LlamaMlp&)>& attach, bool with_losses = false) {
    LlamaMlp mlp(text);
    for (auto& p : mlp->parameters()) p.set_requires_grad(false);  // frozen base
    attach(mlp);
    auto params = mlp->parameters();
    LayerLosses losses;
    auto step = [&] {
      auto input = x.clone().requires_grad_(true);
      losses.clear();
      std::optional<RoutingSinkScope> sink;
      if (with_losses) sink.emplace(RoutingSinks{nullptr, &losses});
      auto y = mlp(input);
      auto loss = y.square().mean();
      if (!losses.empty()) loss = loss + sum_over_layers(losses).total;
      loss.backward();
      for (auto& p : params)
        if (p.grad().defined()) p.mutable_grad().reset();
    };
    double ms = median_ms(step, variant == "naive loop" ? std::max(1, reps / 2) : reps);
    if (!g_trace_prefix.empty()) {
      std::string name = s.name + "." + variant;
      for (char& ch : name) ch = ch == ' ' || ch == '/' ? '_' : ch;
      torch::autograd::profiler::RecordProfile profile(g_trace_prefix + name + ".json");
      step();
    }
    results.push_back({variant, ms});
    std::printf("  %-22s %10.1f ms/step\n", variant.c_str(), ms);
    std::fflush(stdout);
  };

  std::printf("shape %s: hidden %lld, ffn %lld, tokens %lld, rank %lld, experts %lld, top-%lld, %d threads\n",
              s.name.c_str(), (long long)s.hidden, (long long)s.ffn, (long long)s.tokens, (long long)s.rank,
              (long long)s.experts, (long long)s.top_k, torch::get_num_threads());
  bench("frozen FFN", [](LlamaMlp&) {});
  bench("LoRA gate/up/down", [&](LlamaMlp& mlp) {
    for (auto* lin : {&mlp->gate_proj, &mlp->up_proj, &mlp->down_proj}) {
      auto a = std::make_shared<LoraImpl>(lora_options((*lin)->options.in_features(), (*lin)->options.out_features()));
      randomize(*a);
      (*lin)->attach(a);
    }
  });
  bench("MoLE FFN-level", [&](LlamaMlp& mlp) {  // auto: the fused autograd function
    auto a = std::make_shared<MoleFfnImpl>(MoleFfnOptions(s.hidden, s.ffn, mole).layer_name("bench.mlp"));
    randomize(*a);
    mlp->attach(a);
  });
  bench("MoLE FFN-level sparse", [&](LlamaMlp& mlp) {  // the same in plain autograd ops (before the fused form)
    auto a = std::make_shared<MoleFfnImpl>(
        MoleFfnOptions(s.hidden, s.ffn, MoleOptions(mole).dispatch(Dispatch::kSparse)).layer_name("bench.sparse"));
    randomize(*a);
    mlp->attach(a);
  });
  bench("MoLE linear-level", [&](LlamaMlp& mlp) {
    for (auto* lin : {&mlp->gate_proj, &mlp->up_proj, &mlp->down_proj}) {
      auto a = std::make_shared<MoleLinearImpl>(
          MoleLinearOptions((*lin)->options.in_features(), (*lin)->options.out_features(), mole)
              .layer_name("bench.linear"));
      randomize(*a);
      (*lin)->attach(a);
    }
  });
  if (g_contrastive != 0.0)
    bench("MoLE FFN + contrastive", [&](LlamaMlp& mlp) {
      BalanceLossOptions losses;
      losses.contrastive = g_contrastive;
      auto a = std::make_shared<MoleFfnImpl>(
          MoleFfnOptions(s.hidden, s.ffn, MoleOptions(mole).losses(losses)).layer_name("bench.contrastive"));
      randomize(*a);
      mlp->attach(a);
    }, /*with_losses=*/true);
  if (with_naive)
    bench("naive loop", [&](LlamaMlp& mlp) {
      auto a = std::make_shared<MoleFfnImpl>(
          MoleFfnOptions(s.hidden, s.ffn, MoleOptions(mole).dispatch(Dispatch::kNaive)).layer_name("bench.naive"));
      randomize(*a);
      mlp->attach(a);
    });
  double lora = results[1].ms;
  for (const auto& r : results)
    std::printf("  %-22s x%.2f of frozen, x%.2f of LoRA\n", r.variant.c_str(), r.ms / results[0].ms, r.ms / lora);
  return results;
}

}  // namespace

int main(int argc, char** argv) {
  keep_freed_host_memory();  // as the mole program does (core/host_memory.h)
  torch::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<Shape> shapes = {{"llama-7b-ffn", 4096, 11008, 256, 16, 8, 2}, {"tiny-demo", 256, 704, 1024, 8, 8, 2}};
  int reps = 3;
  bool custom = false;
  Shape c{"custom", 4096, 11008, 64, 16, 8, 2};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> int64_t {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_moe: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--hidden") c.hidden = next(), custom = true;
    else if (a == "--ffn") c.ffn = next(), custom = true;
    else if (a == "--tokens") c.tokens = next(), custom = true;
    else if (a == "--rank") c.rank = next(), custom = true;
    else if (a == "--experts") c.experts = next(), custom = true;
    else if (a == "--top-k") c.top_k = next(), custom = true;
    else if (a == "--reps") reps = static_cast<int>(next());
    else if (a == "--threads") torch::set_num_threads(static_cast<int>(next()));
    else if (a == "--trace" && i + 1 < argc) g_trace_prefix = argv[++i];
    else if (a == "--contrastive" && i + 1 < argc) g_contrastive = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_moe [--hidden D] [--ffn F] [--tokens N] [--rank R] [--experts E] "
                           "[--top-k K] [--reps N] [--threads N] [--trace PREFIX] [--contrastive C]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (custom) shapes = {c};
  std::vector<Result> first;
  for (size_t i = 0; i < shapes.size(); ++i) {
    auto r = run_shape(shapes[i], reps, true);
    std::printf("%s: mole_vs_lora=%.3f\n", shapes[i].name.c_str(), r[2].ms / r[1].ms);
    if (i == 0) first = r;
  }
  std::printf("ratio_mole_vs_lora=%.3f ratio_naive_vs_mole=%.3f\n", first[2].ms / first[1].ms,
              first.back().ms / first[2].ms);
  return 0;
}
