// mole train: AdamW against torch's, the cosine schedule, config overrides, exact resume (N steps straight equal
// N/2 + resume + N/2: losses and final weights), and a SIGKILL during a checkpoint write leaving the previous
// checkpoint loadable and resumable.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <ATen/autocast_mode.h>
#include <opencv2/imgcodecs.hpp>
#include <torch/torch.h>

#include "core/dtype.h"
#include "core/json_config.h"
#include "core/safetensors.h"
#include "data/data_check.h"
#include "data/shapes.h"
#include "model/llava_loader.h"
#include "model/trained_model.h"
#include "moe/routing_context.h"
#include "pipelines/checkpoint.h"
#include "pipelines/optim.h"
#include "pipelines/train_config.h"
#include "pipelines/trainer.h"
#include "tests/language/tiny_tokenizer.h"
#include "tests/pipelines/tiny_training.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;
namespace fs = std::filesystem;

using namespace mole::test;

TEST_CASE("AdamW equals torch::optim::AdamW step for step", "[unit][train]") {
  torch::manual_seed(0);
  torch::Tensor w = torch::randn({5, 4}, torch::kFloat64), b = torch::randn({4}, torch::kFloat64);
  torch::Tensor w_ref = w.clone().set_requires_grad(true), b_ref = b.clone().set_requires_grad(true);
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  auto groups = make_param_groups({{"layer.weight", w}, {"layer.bias", b}}, 0.01, 0.01, 0.01, 0.1);
  REQUIRE(groups.size() == 2);  // decay (the matrix) and no_decay (the bias)
  AdamW ours(groups, 0.9, 0.999, 1e-8);
  torch::optim::AdamW ref_decay({w_ref}, torch::optim::AdamWOptions(0.01).weight_decay(0.1));
  torch::optim::AdamW ref_plain({b_ref}, torch::optim::AdamWOptions(0.01).weight_decay(0.0));
  for (int step = 0; step < 5; ++step) {
    torch::Tensor gw = torch::randn({5, 4}, torch::kFloat64), gb = torch::randn({4}, torch::kFloat64);
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    w_ref.mutable_grad() = gw.clone();
    b_ref.mutable_grad() = gb.clone();
    ours.step(1.0);
    ref_decay.step();
    ref_plain.step();
    CHECK(mole::test::max_abs_diff(w, w_ref) < 1e-12);
    CHECK(mole::test::max_abs_diff(b, b_ref) < 1e-12);
  }
  CHECK(ours.steps() == 5);
}

TEST_CASE("cosine schedule with warm-up as transformers computes it", "[unit][train]") {
  CHECK(cosine_with_warmup(0, 10, 110) == 0.0);
  CHECK(cosine_with_warmup(5, 10, 110) == Approx(0.5));
  CHECK(cosine_with_warmup(10, 10, 110) == Approx(1.0));
  CHECK(cosine_with_warmup(60, 10, 110) == Approx(0.5));
  CHECK(cosine_with_warmup(110, 10, 110) == Approx(0.0).margin(1e-12));
  CHECK(cosine_with_warmup(110, 10, 110, 0.1) == Approx(0.1));
  CHECK(cosine_with_warmup(0, 0, 10) == Approx(1.0));
}

TEST_CASE("train config: --set overrides, unknown keys refused", "[unit][train]") {
  json j = {{"stage", "finetune"}, {"out", "x"}, {"model", {{"base", "b"}, {"adapter", {{"kind", "lora"}}}}},
            {"data", {{"train", "d.json"}}}};
  apply_override(j, "optim.lr=0.5");
  apply_override(j, "model.adapter.rank=4");
  apply_override(j, "data.template=llava_llama_2");
  apply_override(j, "data.train=[\"a.json\",\"b.json\"]");
  TrainConfig c = TrainConfig::from_json(j, "cfg");
  CHECK(c.optim.lr == 0.5);
  REQUIRE(c.model.adapter);
  CHECK(c.model.adapter->mole.rank() == 4);
  CHECK(c.data.conversation_template == Template::kLlavaLlama2);
  CHECK(c.data.train == std::vector<std::string>{"a.json", "b.json"});
  CHECK(TrainConfig::from_json(c.to_json(), "again").to_json() == c.to_json());
  apply_override(j, "optim.learning_rate=1");
  CHECK_THROWS_WITH(TrainConfig::from_json(j, "cfg"), Contains("unknown key 'optim.learning_rate'"));
  CHECK_THROWS_AS(apply_override(j, "noequals"), ConfigError);
}

TEST_CASE("a resumed run equals an uninterrupted one: losses and final weights", "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_resume");
  TrainResult straight = run_training(TrainConfig::from_json(finetune_config(dir + "/straight"), "a"), false);
  REQUIRE(straight.steps == 6);

  json first = finetune_config(dir + "/resumed");
  first["run"]["stop_after"] = 3;
  TrainResult half = run_training(TrainConfig::from_json(first, "b1"), false);
  CHECK(half.stopped);
  CHECK(half.steps == 3);
  CHECK(!fs::exists(dir + "/resumed/final"));
  TrainResult rest = run_training(TrainConfig::from_json(finetune_config(dir + "/resumed"), "b2"), true);
  CHECK(rest.steps == 6);

  const auto a = logged_steps(dir + "/straight/metrics.jsonl"), b = logged_steps(dir + "/resumed/metrics.jsonl");
  REQUIRE(a.size() == 6);
  REQUIRE(b.size() == 6);
  for (size_t i = 0; i < 6; ++i) {
    INFO("step " << i + 1);
    CHECK(a[i]["step"] == b[i]["step"]);
    CHECK(a[i]["loss"].get<double>() == b[i]["loss"].get<double>());  // exactly
    CHECK(a[i]["grad_norm"].get<double>() == b[i]["grad_norm"].get<double>());
    CHECK(a[i]["aux"] == b[i]["aux"]);
  }
  CHECK(a[5]["aux"].contains("switch_aux"));
  // every window says how much it trained on and the peak memory so far, which never falls
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("window " << i + 1);
    CHECK(a[i]["tokens"].get<int64_t>() > 0);
    CHECK(a[i]["samples"].get<int64_t>() > 0);
    CHECK(a[i]["peak_rss_mib"].get<double>() > 0.0);
    if (i > 0) CHECK(a[i]["peak_rss_mib"].get<double>() >= a[i - 1]["peak_rss_mib"].get<double>());
  }
  TensorStore wa(dir + "/straight/final/trainable.safetensors"), wb(dir + "/resumed/final/trainable.safetensors");
  REQUIRE(wa.names() == wb.names());
  for (const auto& name : wa.names()) CHECK(torch::equal(wa.tensor(name), wb.tensor(name)));

  // The final folder is a model eval can load: adapters and projector on the base.
  TrainedModel m = load_trained(dir + "/straight");
  CHECK(m.spec.adapter["kind"] == "mole");
  CHECK(fs::exists(dir + "/straight/final/adapter/adapter_config.json"));
  CHECK(fs::exists(dir + "/straight/final/projector.safetensors"));
}

TEST_CASE("SIGKILL during a checkpoint write leaves the previous checkpoint loadable and resumable",
          "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_sigkill");
  json config = finetune_config(dir + "/run");
  config["optim"]["steps"] = 40;
  config["run"]["save_every"] = 2;
  config["run"]["keep_last"] = 5;
  write_json_file(dir + "/run.json", config);
  // A trainer whose checkpoint hook sleeps after the files are written, before the folder is renamed into place
  // (tests/tools/slow_checkpoint_train.cpp): the kill lands inside the write of step 4.
  const std::string cmd = mole::test::slow_checkpoint_train_bin() + " " + dir + "/run.json 1500 > " + dir +
                          "/log.txt 2>&1 & echo $! > " + dir + "/pid";
  REQUIRE(std::system(cmd.c_str()) == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string pid;
  std::ifstream(dir + "/pid") >> pid;
  REQUIRE(!pid.empty());
  const std::string checkpoints = dir + "/run/checkpoints";
  bool writing_second = false;
  for (int i = 0; i < 600 && !writing_second; ++i) {  // up to 60 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(checkpoints + "/step-0000002")) continue;
    for (const auto& e : fs::directory_iterator(checkpoints))
      if (e.path().filename().string().rfind(".tmp-step-0000004", 0) == 0) writing_second = true;
  }
  REQUIRE(std::system(("kill -9 " + pid).c_str()) == 0);
  REQUIRE(writing_second);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));

  auto latest = latest_checkpoint(checkpoints);
  REQUIRE(latest);
  CHECK(fs::path(*latest).filename() == "step-0000002");
  CHECK(!fs::exists(checkpoints + "/step-0000004"));
  TrainedModel m = load_trained(*latest);  // loads: weights and config intact
  CHECK(m.spec.stage == "finetune");

  // and training continues from it
  std::string out;
  CHECK(mole::test::run_command(mole::test::mole_bin() + " train --config " + dir +
                                    "/run.json --resume --set run.stop_after=4",
                                &out) == 0);
  CHECK_THAT(out, Contains("resumed from"));
  CHECK_THAT(out, Contains("step-0000002"));
  CHECK(fs::exists(checkpoints + "/step-0000004"));
}

TEST_CASE("a TrainingError thrown mid-run leaves SIGINT handling, autocast and routing sinks as they were",
          "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_guard");
  json config = finetune_config(dir + "/run");
  config["optim"]["bf16"] = true;  // autocast on the CPU while the run lasts
  // What the caller had in place before the run: its own SIGINT handler and routing sinks, autocast off.
  static std::atomic<int> caller_sigints{0};
  auto caller_handler = +[](int) { ++caller_sigints; };
  auto before = std::signal(SIGINT, caller_handler);
  REQUIRE_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
  RoutingStats caller_stats;
  RoutingSinkScope caller_sinks(RoutingSinks{&caller_stats});

  bool autocast_inside = false;
  TrainHooks hooks;
  hooks.after_step = [&](int64_t step, Llava&) {
    autocast_inside = at::autocast::is_autocast_enabled(at::kCPU);
    if (step == 2) throw TrainingError("stop here");
  };
  CHECK_THROWS_WITH(run_training(TrainConfig::from_json(config, "guard"), false, hooks), Contains("stop here"));
  CHECK(autocast_inside);
  CHECK_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
  REQUIRE(RoutingSinkScope::current() != nullptr);
  CHECK(RoutingSinkScope::current()->stats == &caller_stats);  // the caller's sinks again, not the run's
  CHECK(caller_stats.layers().empty());                        // and the run recorded nothing into them
  CHECK(std::signal(SIGINT, before) == caller_handler);       // the caller's handler was back in place
  CHECK(caller_sigints == 0);
}

// ---- many processes: torchrun --no-python build/mole train -------------------------------------------------------

namespace {

// torchrun of the project's .venv (the python LibTorch came from). --standalone: a fresh store on a free port.
std::string torchrun(int nproc) {
  return (fs::path(MOLE_PYTHON).parent_path() / "torchrun").string() + " --standalone --nproc_per_node " +
         std::to_string(nproc) + " --no-python " + mole::test::mole_bin() + " train";
}

void check_same_weights(const std::string& a_run, const std::string& b_run, double tolerance) {
  TensorStore wa(a_run + "/final/trainable.safetensors"), wb(b_run + "/final/trainable.safetensors");
  REQUIRE(wa.names() == wb.names());
  for (const auto& name : wa.names()) {
    INFO(name);
    CHECK(mole::test::max_abs_diff(wa.tensor(name), wb.tensor(name)) <= tolerance);
  }
}

}  // namespace

namespace {

// The finetune config with deterministic routing and no dropout (the ranks' random streams differ from one
// process's), every batch intact (max_len 512: a batch emptied by truncation would shift the shards), and the
// adapter LoRA, or MoLE with its balance losses per modality.
json equality_config(const std::string& out, bool mole) {
  json c = finetune_config(out);
  c["data"]["max_len"] = 512;
  c["optim"]["grad_accum"] = 1;
  c["optim"]["steps"] = 4;
  if (mole) {
    c["model"]["adapter"]["dropout"] = 0.0;
    c["model"]["adapter"]["gating"] = "topk_softmax";
    c["model"]["adapter"]["losses"]["per_modality"] = true;
  } else {
    c["model"]["adapter"] = {{"kind", "lora"}, {"rank", 4}, {"alpha", 8.0}, {"dropout", 0.0}};
  }
  return c;
}

// The same losses at every step, the same tokens, the routing pooled over the ranks, the same final weights.
void check_same_run(const std::string& one, const std::string& many, bool routed) {
  check_same_weights(one, many, 1e-6);
  const auto a = logged_steps(one + "/metrics.jsonl"), b = logged_steps(many + "/metrics.jsonl");
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (size_t i = 0; i < 4; ++i) {
    INFO("step " << i + 1);
    CHECK(std::abs(a[i]["loss"].get<double>() - b[i]["loss"].get<double>()) < 1e-6);
    CHECK(std::abs(a[i]["grad_norm"].get<double>() - b[i]["grad_norm"].get<double>()) < 1e-5);
    CHECK(a[i]["tokens"] == b[i]["tokens"]);  // every rank's tokens counted
    CHECK(a[i]["samples"] == b[i]["samples"]);
    if (!routed) continue;
    for (const auto& [name, term] : a[i]["aux"].items())
      CHECK(std::abs(term.get<double>() - b[i]["aux"][name].get<double>()) < 1e-6);
    for (const char* m : {"text", "image"}) {  // the routing statistics are the ranks' pooled
      INFO(m);
      REQUIRE(b[i]["routing"].contains(m));
      CHECK(std::abs(a[i]["routing"][m]["max_share"].get<double>() - b[i]["routing"][m]["max_share"].get<double>()) <
            1e-9);
      CHECK(std::abs(a[i]["routing"][m]["entropy"].get<double>() - b[i]["routing"][m]["entropy"].get<double>()) <
            1e-6);
    }
    // routing by task family (the shapes records' categories), pooled over the ranks too
    REQUIRE(a[i].contains("expert_family"));
    REQUIRE(b[i].contains("expert_family"));
    const json& fa = a[i]["expert_family"];
    const json& fb = b[i]["expert_family"];
    CHECK(fa["families"] == fb["families"]);
    CHECK(std::abs(fa["mean_nmi"].get<double>() - fb["mean_nmi"].get<double>()) < 1e-9);
    REQUIRE(fa["layers"].size() == fb["layers"].size());
    for (const auto& [layer, l] : fa["layers"].items()) {
      INFO(layer);
      REQUIRE(fb["layers"].contains(layer));
      CHECK(l["tokens"] == fb["layers"][layer]["tokens"]);
      CHECK(l["tokens"].get<double>() == a[i]["tokens"].get<double>());  // every language-model token, once
    }
  }
}

}  // namespace

TEST_CASE("torchrun: two ranks of batch 4 train as one process accumulating two batches of 4",
          "[unit][train][dist]") {
  for (bool mole : {false, true}) {
    DYNAMIC_SECTION((mole ? "MoLE, balance losses per modality" : "LoRA")) {
      const std::string dir = mole::test::scratch_dir(std::string("training_two_ranks_") + (mole ? "mole" : "lora"));
      write_json_file(dir + "/two.json", equality_config(dir + "/two", mole));
      std::string out;
      REQUIRE(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir + "/two.json", &out) == 0);
      CHECK_THAT(out, Contains("2 processes"));
      json one = equality_config(dir + "/one", mole);
      one["optim"]["grad_accum"] = 2;
      run_training(TrainConfig::from_json(one, "one process"), false);
      check_same_run(dir + "/one", dir + "/two", mole);
      // rank 0 alone wrote the log: one line per step, no second writer
      std::ifstream in(dir + "/two/metrics.jsonl");
      int lines = 0;
      for (std::string line; std::getline(in, line);) ++lines;
      CHECK(lines == 5);  // 4 windows and the end event
    }
  }
}

TEST_CASE("torchrun: two machines on loopback (two launches, c10d rendezvous) train as one process",
          "[unit][train][dist]") {
  const std::string dir = mole::test::scratch_dir("training_two_nodes");
  write_json_file(dir + "/two.json", equality_config(dir + "/two", true));
  const std::string endpoint = "127.0.0.1:" + std::to_string(mole::test::free_tcp_port());
  const std::string launch = (fs::path(MOLE_PYTHON).parent_path() / "torchrun").string() +
                             " --nnodes 2 --nproc_per_node 1 --rdzv-backend c10d --rdzv-endpoint " + endpoint +
                             " --rdzv-id mole_test --no-python " + mole::test::mole_bin() + " train --config " +
                             dir + "/two.json";
  // the second "machine" in the background, the first here; both must end well
  REQUIRE(std::system(("(timeout 300 " + launch + " > " + dir + "/node1.txt 2>&1; echo $? > " + dir +
                       "/node1.rc) &").c_str()) == 0);
  std::string out;
  CHECK(mole::test::run_command("timeout 300 " + launch, &out) == 0);
  std::string rc;
  for (int i = 0; i < 600 && rc.empty(); ++i) {
    std::ifstream(dir + "/node1.rc") >> rc;
    if (rc.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(rc == "0");
  json one = equality_config(dir + "/one", true);
  one["optim"]["grad_accum"] = 2;
  run_training(TrainConfig::from_json(one, "one process"), false);
  check_same_run(dir + "/one", dir + "/two", true);
}

TEST_CASE("torchrun: a stopped two-rank run resumes exactly, and another number of processes is refused",
          "[unit][train][dist]") {
  const std::string dir = mole::test::scratch_dir("training_two_ranks_resume");
  // noisy gating and dropout: each rank's generator must come back as it was
  json config = finetune_config(dir + "/straight");
  config["optim"]["grad_accum"] = 1;
  config["optim"]["steps"] = 4;
  write_json_file(dir + "/straight.json", config);
  config["out"] = dir + "/resumed";
  write_json_file(dir + "/resumed.json", config);
  std::string out;
  REQUIRE(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir + "/straight.json", &out) == 0);
  REQUIRE(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir +
                                      "/resumed.json --set run.stop_after=2", &out) == 0);
  CHECK_THAT(out, Contains("checkpoint written"));
  const json state = read_json_file(dir + "/resumed/checkpoints/step-0000002/trainer_state.json");
  CHECK(state["world_size"] == 2);
  REQUIRE(state["rank_loaders"].size() == 2);
  CHECK(state["rank_loaders"][1]["rank"] == 1);

  // one process on a two-process checkpoint: a clear error, nothing written
  CHECK(mole::test::run_command(mole::test::mole_bin() + " train --config " + dir + "/resumed.json --resume", &out) !=
        0);
  CHECK_THAT(out, Contains("written by a run of 2 processes; this run has 1"));
  CHECK(!fs::exists(dir + "/resumed/final"));

  REQUIRE(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir + "/resumed.json --resume", &out) ==
          0);
  CHECK_THAT(out, Contains("resumed from"));
  check_same_weights(dir + "/straight", dir + "/resumed", 0.0);  // exactly
  const auto a = logged_steps(dir + "/straight/metrics.jsonl"), b = logged_steps(dir + "/resumed/metrics.jsonl");
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(a[i]["loss"].get<double>() == b[i]["loss"].get<double>());
}

TEST_CASE("torchrun: SIGKILL of one rank stops the job, and --resume under torchrun continues exactly",
          "[unit][train][dist]") {
  const std::string dir = mole::test::scratch_dir("training_rank_dies");
  json config = finetune_config(dir + "/killed");
  config["optim"]["grad_accum"] = 1;
  config["optim"]["steps"] = 200;
  config["run"]["save_every"] = 2;
  config["run"]["log_every"] = 10;
  write_json_file(dir + "/killed.json", config);
  config["out"] = dir + "/straight";
  write_json_file(dir + "/straight.json", config);
  const std::string cmd = "timeout 300 " + torchrun(2) + " --config " + dir + "/killed.json > " + dir +
                          "/log.txt 2>&1; echo $? > " + dir + "/rc";
  REQUIRE(std::system(("(" + cmd + ") &").c_str()) == 0);
  // once a few checkpoints are written, SIGKILL rank 1: the process whose environment says RANK=1
  int rank1 = -1;
  for (int i = 0; i < 3000 && rank1 < 0; ++i) {  // up to 60 s
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (!fs::exists(dir + "/killed/checkpoints/step-0000006")) continue;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string pid = e.path().filename().string();
      if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream cmdline(e.path() / "cmdline"), environ(e.path() / "environ");
      std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
      std::string vars((std::istreambuf_iterator<char>(environ)), std::istreambuf_iterator<char>());
      if (args.find(dir + "/killed.json") != std::string::npos && args.find("torchrun") == std::string::npos &&
          vars.find(std::string("\0RANK=1\0", 8)) != std::string::npos)
        rank1 = std::stoi(pid);
    }
  }
  REQUIRE(rank1 > 0);
  ::kill(rank1, SIGKILL);
  std::string rc;
  for (int i = 0; i < 600 && rc.empty(); ++i) {  // the job ends: rank 0 does not wait forever
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream(dir + "/rc") >> rc;
  }
  REQUIRE(!rc.empty());
  CHECK(rc != "0");
  {
    std::ifstream log(dir + "/log.txt");
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    // torchrun names the rank that died; rank 0 ended too (its collective failed, or torchrun stopped it)
    CHECK_THAT(text, Contains("rank      : 1 (local_rank: 1)"));
    CHECK_THAT(text, Contains("Signal 9 (SIGKILL) received by PID " + std::to_string(rank1)));
  }
  REQUIRE(!fs::exists(dir + "/killed/final"));  // killed before the end

  std::string out;
  REQUIRE(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir + "/killed.json --resume", &out) ==
          0);
  CHECK_THAT(out, Contains("resumed from"));
  REQUIRE(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir + "/straight.json", &out) == 0);
  check_same_weights(dir + "/straight", dir + "/killed", 0.0);  // exactly
}

TEST_CASE("torchrun: an error on one rank is printed with its rank, is torchrun's root cause, and ends the others",
          "[unit][train][dist]") {
  const std::string dir = mole::test::scratch_dir("training_rank_error");
  json config = finetune_config(dir + "/run");
  config["optim"]["grad_accum"] = 1;
  write_json_file(dir + "/run.json", config);
  fs::create_directories(dir + "/run/run.json");  // rank 0 alone writes run.json: here it cannot
  std::string out;
  CHECK(mole::test::run_command("timeout 300 " + torchrun(2) + " --config " + dir + "/run.json", &out) != 0);
  CHECK_THAT(out, Contains("mole train (rank 0 of 2): error:"));
  CHECK_THAT(out, Contains("run.json"));
  // its message reached torchrun's failure summary through the error file
  CHECK_THAT(out, Contains("traceback : mole train (rank 0 of 2): "));
  // rank 1 was waiting for rank 0 in the first collective: it ends as well, saying which rank it is
  CHECK_THAT(out, Contains("mole train (rank 1 of 2): error:"));
}

TEST_CASE("run.device cuda without a CUDA device is a config error that names it", "[unit][train]") {
  if (torch::cuda::is_available()) return;  // a CUDA device is present: nothing to refuse
  json config = finetune_config(mole::test::scratch_dir("training_no_cuda"));
  config["run"]["device"] = "cuda";
  CHECK_THROWS_WITH(run_training(TrainConfig::from_json(config, "c"), false),
                    Contains("run.device cuda: no CUDA device here"));
}

TEST_CASE("bf16 autocast: every step computes with the weights the step before wrote", "[unit][train]") {
  // Autocast keeps bf16 copies of the float32 weights it casts until its cache is cleared; a trainer that
  // never clears it trains weights its forward no longer reads (the loss stays where it started).
  const std::string dir = mole::test::scratch_dir("training_bf16_learns");
  json config = finetune_config(dir + "/f32");
  config["optim"]["steps"] = 5;
  config["optim"]["lr"] = 1e-2;
  config["optim"]["grad_accum"] = 1;
  config["optim"]["warmup_ratio"] = 0.0;
  config["model"]["adapter"] = {{"kind", "lora"}, {"rank", 4}, {"alpha", 8.0},  // LoRA on every linear layer
                                 {"targets", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}};
  config["data"]["workers"] = 0;
  config["optim"]["bf16"] = false;
  run_training(TrainConfig::from_json(config, "f32"), false);
  const std::vector<json> f32 = logged_steps(dir + "/f32/metrics.jsonl");
  for (const char* dtype : {"float32", "bfloat16"}) {
    INFO("model.dtype " << dtype);
    config["out"] = dir + "/" + dtype;
    config["optim"]["bf16"] = true;
    config["model"]["dtype"] = dtype;
    run_training(TrainConfig::from_json(config, dtype), false);
    const std::vector<json> bf16 = logged_steps(dir + "/" + dtype + "/metrics.jsonl");
    REQUIRE(bf16.size() == f32.size());
    const double fell = f32.front()["loss"].get<double>() - f32.back()["loss"].get<double>();
    REQUIRE(fell > 0.1);  // the float32 run learns visibly in these steps
    for (size_t i = 0; i < f32.size(); ++i)  // bf16 rounding moves the losses by far less than training does
      CHECK(std::abs(bf16[i]["loss"].get<double>() - f32[i]["loss"].get<double>()) < 0.1 * fell);
  }
}

TEST_CASE("model.dtype bfloat16: the frozen base in bf16, what trains in float32, the loss of the float32 base",
          "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_bf16_base");
  json config = finetune_config(dir + "/f32");
  config["optim"]["bf16"] = true;
  config["optim"]["steps"] = 3;
  const TrainResult f32 = run_training(TrainConfig::from_json(config, "f32"), false);
  config["out"] = dir + "/bf16";
  config["model"]["dtype"] = "bfloat16";
  std::map<std::string, int> dtypes;  // "frozen bf16", "trained f32", ... over the model's parameters
  TrainHooks hooks;
  hooks.after_step = [&](int64_t, Llava& model) {
    dtypes.clear();
    for (const auto& p : model->parameters())
      ++dtypes[std::string(p.requires_grad() ? "trained " : "frozen ") + dtype_name(p.scalar_type())];
  };
  const TrainResult bf16 = run_training(TrainConfig::from_json(config, "bf16"), false, hooks);
  CHECK(dtypes.count("frozen bfloat16") == 1);
  CHECK(dtypes.count("frozen float32") == 0);
  CHECK(dtypes.count("trained float32") == 1);
  CHECK(dtypes.count("trained bfloat16") == 0);
  // autocast computed in bf16 either way: holding the weights in it changes the numbers only slightly
  CHECK(std::abs(bf16.last_loss - f32.last_loss) < 1e-2 * std::abs(f32.last_loss));
  TensorStore saved(dir + "/bf16/final/trainable.safetensors");
  for (const auto& name : saved.names()) CHECK(saved.info(name).dtype == "F32");

  config["optim"]["bf16"] = false;
  CHECK_THROWS_WITH(TrainConfig::from_json(config, "c"), Contains("bfloat16 needs bfloat16 autocast"));
  config["model"]["dtype"] = "fp16";
  CHECK_THROWS_WITH(TrainConfig::from_json(config, "c"), Contains("must be float32 or bfloat16"));
}

TEST_CASE("odd and bad records: training finishes, trains every good one, counts every bad one once as check-data does",
          "[unit][train][data]") {
  const Setup& s = setup();
  const std::string dir = mole::test::scratch_dir("training_odd_records");
  const std::string img = "images/train/000000.png", img2 = "images/train/000001.png";
  // Good: plain, two images in one turn, images in two turns, gpt first, a system turn, messages with parts, an
  // image without a tag. Bad: a missing image, two images for one tag, bad_injected, which the hook fails, and an
  // image of 64000 x 1 pixels, refused from its header.
  const std::vector<std::string> good = {"plain", "two_images", "two_turns", "gpt_first", "system", "messages", "no_tag"};
  std::ofstream(dir + "/odd.json") << R"([
    {"id": "plain", "image": ")" + img + R"(", "conversations": [{"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "A star."}]},
    {"id": "two_images", "image": [")" + img + R"(", ")" + img2 + R"("], "conversations": [{"from": "human", "value": "<image> or <image>?"}, {"from": "gpt", "value": "The first."}]},
    {"id": "two_turns", "image": [")" + img + R"(", ")" + img2 + R"("], "conversations": [{"from": "human", "value": "<image>\nThis?"}, {"from": "gpt", "value": "Red."},
                                       {"from": "human", "value": "And <image>?"}, {"from": "gpt", "value": "Blue."}]},
    {"id": "gpt_first", "conversations": [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Two plus two?"}, {"from": "gpt", "value": "Four."}]},
    {"id": "system", "conversations": [{"from": "system", "value": "Answer in one word."}, {"from": "human", "value": "Colour of grass?"}, {"from": "gpt", "value": "Green."}]},
    {"id": "messages", "images": [")" + img2 + R"("], "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Shape?"}]}, {"role": "assistant", "content": "A cube."}]},
    {"id": "no_tag", "image": ")" + img + R"(", "conversations": [{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "Green."}]},
    {"id": "bad_missing", "image": "images/train/gone.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
    {"id": "bad_two_for_one", "image": [")" + img + R"(", ")" + img2 + R"("], "conversations": [{"from": "human", "value": "<image>\nWhich?"}, {"from": "gpt", "value": "B."}]},
    {"id": "bad_injected", "image": ")" + img + R"(", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "C."}]},
    {"id": "bad_wide", "image": "images/train/wide_64000x1.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "D."}]}
  ])";
  // A 64000 x 1 PNG (a few hundred bytes): padded to a square it would be 4 gigapixels, 12 GB of RGB.
  REQUIRE(cv::imwrite(s.data + "/images/train/wide_64000x1.png", cv::Mat(1, 64000, CV_8UC3, cv::Scalar(0, 0, 255))));
  json config = finetune_config(dir + "/run");
  config["data"]["train"] = dir + "/odd.json";
  config["data"]["workers"] = 0;  // records are prepared as batches are taken: the hook sees exactly one epoch
  config["optim"]["steps"] = 2;   // 11 records, batches of 4, 2 per step: the 3 batches of one epoch (and 1 more)
  config["optim"]["grad_accum"] = 2;
  std::multiset<std::string> prepared;
  TrainHooks hooks;
  hooks.sample_hook = [&](const LlavaRecord& r) {
    prepared.insert(r.id);
    if (r.id == "bad_injected") throw std::runtime_error("injected failure");
  };
  const TrainResult result = run_training(TrainConfig::from_json(config, "odd"), false, hooks);
  CHECK(result.steps == 2);
  CHECK(std::isfinite(result.last_loss));
  // every good record was made into a sample of a trained batch (the 4th batch repeats 4 of the next epoch's)
  for (const std::string& id : good) CHECK(prepared.count(id) >= 1);
  const std::map<std::string, int64_t> expected = {{"image file missing", 1},
                                                   {"<image> tags (1) do not match images (2)", 1},
                                                   {"sample failed: injected failure", 1},
                                                   {"image too large", 1}};
  CHECK(result.skipped.counts() == expected);
  const json j = result.skipped.to_json();
  for (const auto& [reason, entry] : j["reasons"].items()) CHECK(entry["first_files"][0] == dir + "/odd.json");
  CHECK(j["reasons"]["sample failed: injected failure"]["first_ids"][0] == "bad_injected");

  // check-data's code on the same data and settings finds the very same
  const TrainConfig c = TrainConfig::from_json(config, "odd");
  LoaderOptions o;
  o.batch_size = 4;
  o.n_workers = 0;
  o.conversation_template = c.data.conversation_template;
  o.max_len = c.data.max_len;
  o.n_image_tokens = read_llava_config(s.base).n_image_features();
  o.image_dir = s.data;
  o.sample_hook = hooks.sample_hook;
  const DataCheck check =
      check_dataset(std::make_shared<const LlavaDataset>(read_llava_dataset(dir + "/odd.json")),
                    std::make_shared<const Tokenizer>(Tokenizer::load(s.tokenizer)),
                    std::make_shared<const ImageProcessor>(ImageProcessorConfig::from_file(s.base + "/preprocessor_config.json")), o);
  CHECK(check.skipped.to_json() == j);
  CHECK(check.usable_samples == int64_t(good.size()));
  CHECK(check.images == 1 + 2 + 2 + 1 + 1);
}

TEST_CASE("run folders: a second run into a run's folder is refused unless --overwrite, which starts it anew",
          "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_folder_overwrite");
  json config = finetune_config(dir + "/run");
  config["optim"]["steps"] = 2;
  config["run"]["save_every"] = 1;
  run_training(TrainConfig::from_json(config, "first"), false);
  REQUIRE(fs::exists(dir + "/run/checkpoints/step-0000001"));
  std::ofstream(dir + "/run/notes.txt") << "the user's own file";
  CHECK_THROWS_WITH(run_training(TrainConfig::from_json(config, "again"), false),
                    Contains(dir + "/run: holds a run already") && Contains("--resume") && Contains("--overwrite"));

  config["run"]["save_every"] = 0;
  RunFolderRules overwrite;
  overwrite.overwrite = true;
  const TrainResult again = run_training(TrainConfig::from_json(config, "again"), false, {}, overwrite);
  CHECK(again.steps == 2);
  CHECK(!fs::exists(dir + "/run/checkpoints/step-0000001"));  // the first run's checkpoints are gone
  CHECK(fs::exists(dir + "/run/checkpoints/step-0000002"));
  CHECK(logged_steps(dir + "/run/metrics.jsonl").size() == 2);  // one run's lines, not two
  CHECK(fs::exists(dir + "/run/notes.txt"));                    // only mole's own files were removed
  // an empty folder, or one without a run in it, is fine
  fs::create_directories(dir + "/empty");
  config["out"] = dir + "/empty";
  CHECK(run_training(TrainConfig::from_json(config, "empty"), false).steps == 2);
}

TEST_CASE("run folders: --resume refuses config changes that break exactness, and a finished run is left alone",
          "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_folder_resume");
  json config = finetune_config(dir + "/run");
  config["run"]["stop_after"] = 2;
  run_training(TrainConfig::from_json(config, "first"), false);

  json longer = config;
  longer["optim"]["steps"] = 8;
  longer["data"]["batch_size"] = 2;
  CHECK_THROWS_WITH(run_training(TrainConfig::from_json(longer, "longer"), true),
                    Contains("run.json: --resume with a config that differs") && Contains("optim.steps: 6 -> 8") &&
                        Contains("data.batch_size: 4 -> 2") && Contains("--allow-config-change"));
  // what does not decide the result may change: logging, stop_after, threads, loader threads
  json cosmetic = config;
  cosmetic["run"].erase("stop_after");
  cosmetic["run"]["log_every"] = 3;
  cosmetic["run"]["threads"] = 2;
  cosmetic["data"]["workers"] = 1;
  CHECK(config_changes(TrainConfig::from_json(config, "a").to_json(), TrainConfig::from_json(cosmetic, "b").to_json())
            .empty());
  json resumed = config;
  resumed["run"].erase("stop_after");
  const TrainResult done = run_training(TrainConfig::from_json(resumed, "resumed"), true);
  CHECK(done.steps == 6);
  CHECK(!done.already_finished);

  // resuming again: the run is over; nothing is written
  const auto final_time = fs::last_write_time(dir + "/run/final/trainable.safetensors");
  const auto metrics_size = fs::file_size(dir + "/run/metrics.jsonl");
  const TrainResult again = run_training(TrainConfig::from_json(resumed, "again"), true);
  CHECK(again.already_finished);
  CHECK(again.steps == 6);
  CHECK(fs::last_write_time(dir + "/run/final/trainable.safetensors") == final_time);
  CHECK(fs::file_size(dir + "/run/metrics.jsonl") == metrics_size);

  // more steps on a finished run, allowed explicitly: it goes on from step 6
  json more = resumed;
  more["optim"]["steps"] = 7;
  CHECK_THROWS_WITH(run_training(TrainConfig::from_json(more, "more"), true), Contains("optim.steps: 6 -> 7"));
  RunFolderRules allow;
  allow.allow_config_change = true;
  CHECK(run_training(TrainConfig::from_json(more, "more"), true, {}, allow).steps == 7);
}

TEST_CASE("metrics.jsonl reads as one run after a resume from an older checkpoint, and the summary is the window mean",
          "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("training_metrics_resume");
  json config = finetune_config(dir + "/run");
  config["run"]["save_every"] = 2;
  config["run"]["keep_last"] = 5;
  config["run"]["log_every"] = 3;
  const TrainResult straight = run_training(TrainConfig::from_json(config, "straight"), false);
  // the mean of the last window (steps 4-6) is what the run reports, as the window's own line says
  const auto windows = logged_steps(dir + "/run/metrics.jsonl");
  REQUIRE(windows.size() == 2);
  CHECK(straight.mean_loss == Approx(windows[1]["loss"].get<double>()).epsilon(1e-9));

  // as if the process had died after step 6 was logged but before its checkpoint: resume from step 4
  fs::remove_all(dir + "/run/final");
  fs::remove_all(dir + "/run/checkpoints/step-0000006");
  fs::remove(dir + "/run/checkpoints/latest");
  config["run"]["log_every"] = 1;
  const TrainResult resumed = run_training(TrainConfig::from_json(config, "resumed"), true);
  CHECK(resumed.steps == 6);
  std::map<int64_t, int> lines_per_step;
  int ends = 0;
  std::ifstream in(dir + "/run/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const json j = json::parse(line);
    if (j.value("event", "") == "end") ++ends;
    else if (j.contains("loss")) ++lines_per_step[j["step"].get<int64_t>()];
  }
  CHECK(ends == 1);
  // step 3 from the first run (a window of 1-3), then 5 and 6 from the resumed one, each once; the first run's
  // line for step 6 was dropped
  CHECK(lines_per_step == std::map<int64_t, int>{{3, 1}, {5, 1}, {6, 1}});
}

TEST_CASE("data.eval: the held-out loss is logged at run.eval_every steps and at the end, and data.weights is checked",
          "[unit][train]") {
  const Setup& s = setup();
  const std::string dir = mole::test::scratch_dir("training_eval_loss");
  json config = finetune_config(dir + "/run");
  config["data"]["eval"] = s.data + "/instruct.json";
  config["run"]["eval_every"] = 4;
  const TrainResult result = run_training(TrainConfig::from_json(config, "eval"), false);
  std::vector<json> evals;
  std::ifstream in(dir + "/run/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    if (j.contains("eval_loss")) evals.push_back(j);
  }
  REQUIRE(evals.size() == 2);  // steps 4 and 6 (the end)
  CHECK(evals[0]["step"] == 4);
  CHECK(evals[1]["step"] == 6);
  CHECK(evals[1]["eval_targets"].get<int64_t>() > 0);
  CHECK(std::isfinite(evals[1]["eval_loss"].get<double>()));
  CHECK(result.eval_loss == evals[1]["eval_loss"].get<double>());
  // measuring does not change training: the same losses as without data.eval
  json plain = finetune_config(dir + "/plain");
  const TrainResult without = run_training(TrainConfig::from_json(plain, "plain"), false);
  CHECK(without.last_loss == result.last_loss);

  json bad = finetune_config(dir + "/bad");
  bad["data"]["weights"] = {1.0, 2.0};
  CHECK_THROWS_WITH(TrainConfig::from_json(bad, "w"), Contains("data.weights: has 2 entries for 1 train files"));
  bad["data"]["weights"] = {-1.0};
  CHECK_THROWS_WITH(TrainConfig::from_json(bad, "w"), Contains("data.weights[0]: must be >= 0"));
  json no_eval = finetune_config(dir + "/bad");
  no_eval["run"]["eval_every"] = 2;
  CHECK_THROWS_WITH(TrainConfig::from_json(no_eval, "e"), Contains("run.eval_every: needs data.eval"));
}
