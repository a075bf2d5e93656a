// dist/: the launch variables torchrun sets, and a Gloo process group of two ranks (two threads of this process
// meeting at a TCP store on a free port): allreduce, broadcast, barrier, gathers, and the data-parallel gradient
// average with gradients some ranks lack.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "core/json_config.h"
#include "dist/data_parallel.h"
#include "dist/launch.h"
#include "dist/process_group.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;

namespace {

// Runs `body(group)` on `world` threads, one rank each; Catch's checks stay on this thread (results returned).
template <typename Result>
std::vector<Result> on_ranks(int64_t world, const std::function<Result(ProcessGroup&)>& body) {
  const int64_t port = mole::test::free_tcp_port();
  std::vector<Result> results(static_cast<size_t>(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        Launch l;
        l.rank = r, l.world_size = world, l.local_rank = r, l.local_world_size = world;
        l.master_addr = "127.0.0.1", l.master_port = port, l.launched = true;
        ProcessGroup group(l, std::chrono::seconds(60));
        results[size_t(r)] = body(group);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const std::string& e : errors) CHECK(e.substr(0, 400) == "");
  for (const std::string& e : errors) REQUIRE(e.empty());
  return results;
}

struct Env {  // sets variables for one test and puts the old values back
  std::vector<std::pair<std::string, std::optional<std::string>>> saved;
  void set(const std::string& name, const char* value) {
    const char* old = std::getenv(name.c_str());
    saved.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    if (value) ::setenv(name.c_str(), value, 1);
    else ::unsetenv(name.c_str());
  }
  ~Env() {
    for (auto it = saved.rbegin(); it != saved.rend(); ++it)
      if (it->second) ::setenv(it->first.c_str(), it->second->c_str(), 1);
      else ::unsetenv(it->first.c_str());
  }
};

}  // namespace

TEST_CASE("torchrun's variables: a plain run is rank 0 of 1, bad values name the variable", "[unit][dist]") {
  Env env;
  for (const char* v : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT"})
    env.set(v, nullptr);
  Launch plain = Launch::from_environment();
  CHECK_FALSE(plain.launched);
  CHECK_FALSE(plain.distributed());
  CHECK(plain.where().empty());

  env.set("RANK", "1");
  env.set("WORLD_SIZE", "4");
  env.set("LOCAL_RANK", "1");
  env.set("LOCAL_WORLD_SIZE", "2");
  env.set("MASTER_ADDR", "node0");
  env.set("MASTER_PORT", "29411");
  env.set("TORCHELASTIC_USE_AGENT_STORE", "True");
  env.set("TORCHELASTIC_RESTART_COUNT", "2");
  Launch l = Launch::from_environment();
  CHECK(l.launched);
  CHECK(l.rank == 1);
  CHECK(l.world_size == 4);
  CHECK(l.local_world_size == 2);
  CHECK(l.master_addr == "node0");
  CHECK(l.master_port == 29411);
  CHECK(l.agent_store);
  CHECK(l.restart_count == 2);
  CHECK(l.where() == " (rank 1 of 4)");

  env.set("TORCHELASTIC_USE_AGENT_STORE", "False");
  CHECK_FALSE(Launch::from_environment().agent_store);
  env.set("RANK", "4");
  CHECK_THROWS_WITH(Launch::from_environment(), Contains("RANK=4 is not below WORLD_SIZE=4"));
  env.set("RANK", "x");
  CHECK_THROWS_WITH(Launch::from_environment(), Contains("RANK='x'"));
  env.set("RANK", "0");
  env.set("MASTER_PORT", "70000");
  CHECK_THROWS_WITH(Launch::from_environment(), Contains("MASTER_PORT"));
  env.set("MASTER_PORT", "29411");
  env.set("WORLD_SIZE", nullptr);
  CHECK_THROWS_WITH(Launch::from_environment(), Contains("RANK is set but WORLD_SIZE is not"));
}

TEST_CASE("a Gloo group of two: allreduce, broadcast, barrier and gathers", "[unit][dist]") {
  using Out = std::vector<torch::Tensor>;
  const auto out = on_ranks<std::pair<Out, std::vector<std::string>>>(2, [](ProcessGroup& g) {
    torch::Tensor sum = torch::arange(5, torch::kFloat64) * double(g.rank() + 1);
    g.all_reduce_sum(sum);
    torch::Tensor from_root = torch::full({3}, float(10 + g.rank()));
    g.broadcast(from_root, 0);
    torch::Tensor from_one = torch::full({2}, int64_t(20 + g.rank()));
    g.broadcast(from_one, 1);
    g.barrier();
    std::vector<std::string> gathered = g.gather_to_main(std::string("rank ") + std::to_string(g.rank()));
    const std::vector<std::string> second = g.gather_to_main(std::string(3, char('a' + g.rank())) + '\0' + "x");
    gathered.insert(gathered.end(), second.begin(), second.end());
    return std::make_pair(Out{sum, from_root, from_one}, gathered);
  });
  for (int r = 0; r < 2; ++r) {
    const Out& t = out[size_t(r)].first;
    CHECK(torch::equal(t[0], torch::arange(5, torch::kFloat64) * 3.0));
    CHECK(torch::equal(t[1], torch::full({3}, 10.0f)));
    CHECK(torch::equal(t[2], torch::full({2}, int64_t(21))));
  }
  // gathers: in rank order on rank 0 (binary bytes intact), nothing elsewhere
  CHECK(out[0].second == std::vector<std::string>{"rank 0", "rank 1", std::string("aaa\0x", 5),
                                                   std::string("bbb\0x", 5)});
  CHECK(out[1].second.empty());
}

TEST_CASE("data parallel: parameters from rank 0, gradients averaged, a gradient no rank has stays absent",
          "[unit][dist]") {
  struct Seen {
    std::vector<torch::Tensor> params, grads;
    std::vector<bool> has_grad;
  };
  const auto seen = on_ranks<Seen>(2, [](ProcessGroup& g) {
    // different starts, drawn from each rank's own generator: the broadcast must make them rank 0's
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(100 + g.rank()));
    std::vector<torch::Tensor> params = {at::randn({3, 4}, gen), at::randn({5}, gen), at::randn({2, 2}, gen),
                                         at::randn({6}, gen, torch::kFloat64)};
    for (auto& p : params) p.set_requires_grad(true);
    broadcast_parameters(g, params);
    // rank r's gradients: param 0 on both ranks, param 1 on rank 1 only, param 2 on neither, param 3 on both
    params[0].mutable_grad() = torch::full({3, 4}, float(g.rank() + 1));
    if (g.rank() == 1) params[1].mutable_grad() = torch::full({5}, 4.0f);
    params[3].mutable_grad() = torch::full({6}, double(g.rank() * 2), torch::kFloat64);
    average_gradients(g, params, /*bucket_bytes=*/32);  // tiny buckets: several allreduces
    Seen s;
    for (auto& p : params) {
      s.params.push_back(p.detach().clone());
      s.has_grad.push_back(p.grad().defined());
      s.grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    }
    return s;
  });
  for (size_t i = 0; i < 4; ++i) CHECK(torch::equal(seen[0].params[i], seen[1].params[i]));
  at::Generator rank0 = at::make_generator<at::CPUGeneratorImpl>(uint64_t(100));
  CHECK(torch::equal(seen[1].params[0], at::randn({3, 4}, rank0)));  // rank 0's draw
  for (int r = 0; r < 2; ++r) {
    const Seen& s = seen[size_t(r)];
    REQUIRE(s.has_grad == std::vector<bool>{true, true, false, true});
    CHECK(torch::equal(s.grads[0], torch::full({3, 4}, 1.5f)));
    CHECK(torch::equal(s.grads[1], torch::full({5}, 2.0f)));  // (0 + 4) / 2: absent counts as zeros
    CHECK(torch::equal(s.grads[3], torch::full({6}, 1.0, torch::kFloat64)));
  }
}

TEST_CASE("a group of one needs no store and changes nothing", "[unit][dist]") {
  Launch l;
  ProcessGroup g(l);
  torch::Tensor t = torch::ones({3});
  g.all_reduce_sum(t);
  g.broadcast(t);
  g.barrier();
  CHECK(torch::equal(t, torch::ones({3})));
  CHECK(g.gather_to_main("x") == std::vector<std::string>{"x"});
}
