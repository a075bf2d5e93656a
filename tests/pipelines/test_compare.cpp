// mole compare: the interval arithmetic against hand computations, the config's refusals, a whole small compare
// (2 configs x 2 seeds on the tiny model), its resume after an interruption, and several processes sharing one.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <catch2/catch.hpp>

#include "core/json_config.h"
#include "eval/stats.h"
#include "pipelines/compare.h"
#include "pipelines/compare_report.h"
#include "tests/pipelines/tiny_training.h"

using namespace mole;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

TEST_CASE("compare statistics: t quantiles, mean intervals and paired differences by hand", "[unit][compare]") {
  // Student's t, two-sided 95%: the printed tables' values
  CHECK(student_t_quantile_975(1) == Approx(12.7062047).epsilon(1e-8));
  CHECK(student_t_quantile_975(2) == Approx(4.30265273).epsilon(1e-8));
  CHECK(student_t_quantile_975(4) == Approx(2.77644511).epsilon(1e-8));
  CHECK(student_t_quantile_975(30) == Approx(2.04227246).epsilon(1e-8));
  CHECK(student_t_quantile_975(100000) == Approx(1.95998).epsilon(1e-4));
  CHECK_THROWS(student_t_quantile_975(0));

  // 20, 22, 24: mean 22, sd 2, half width 4.30265273 * 2 / sqrt(3)
  MeanInterval m = mean_interval({20, 22, 24});
  CHECK(m.n == 3);
  CHECK(m.mean == Approx(22.0));
  CHECK(m.sd == Approx(2.0));
  CHECK(m.lo == Approx(22.0 - 4.96827).epsilon(1e-5));
  CHECK(m.hi == Approx(22.0 + 4.96827).epsilon(1e-5));
  CHECK(m.excludes_zero());

  // paired: 21-20, 23-22, 26-24 = 1, 1, 2: mean 4/3, sd sqrt(1/3), half 4.30265273 * sqrt(1/3) / sqrt(3)
  MeanInterval d = paired_difference({21, 23, 26}, {20, 22, 24});
  CHECK(d.mean == Approx(4.0 / 3.0));
  CHECK(d.sd == Approx(std::sqrt(1.0 / 3.0)));
  CHECK(d.half_width() == Approx(4.30265273 / 3.0).epsilon(1e-7));
  CHECK(d.lo == Approx(4.0 / 3.0 - 4.30265273 / 3.0).epsilon(1e-7));
  CHECK_FALSE(d.excludes_zero());  // -0.101 .. 2.768

  // unpaired, the same numbers give a wider interval: pairing removes what the seed moves in both
  MeanInterval a = mean_interval({21, 23, 26}), b = mean_interval({20, 22, 24});
  CHECK(d.half_width() < std::hypot(a.half_width(), b.half_width()));

  // one value: a mean, no interval; none: NaN; NaN values (a run without the metric) are left out
  MeanInterval one = mean_interval({5});
  CHECK(one.mean == 5.0);
  CHECK(std::isnan(one.lo));
  CHECK_FALSE(one.has_interval());
  CHECK(std::isnan(mean_interval({}).mean));
  CHECK(mean_interval({20, NAN, 24}).n == 2);
  CHECK(paired_difference({1, NAN, 3}, {0, 1, 1}).n == 2);
  CHECK_THROWS(paired_difference({1, 2}, {1}));

  // steps to reach a loss: the first logged step at or below it
  CHECK(steps_to_reach({10, 20, 30}, {3.0, 2.0, 1.0}, 2.0) == 20);
  CHECK(std::isnan(steps_to_reach({10, 20}, {3.0, 2.5}, 2.0)));
}

namespace {

json small_compare(const std::string& out) {
  const test::Setup& s = test::setup();
  json base = test::finetune_config("unused");
  base.erase("out");
  base["run"].erase("seed");
  base["optim"]["steps"] = 4;
  base["optim"]["grad_accum"] = 1;
  base["run"]["log_every"] = 2;
  base["run"]["save_every"] = 2;
  json lora = {{"model", {{"adapter", {{"kind", "lora"}, {"rank", 4}, {"alpha", 8.0}, {"dropout", 0.1},
                                       {"n_experts", nullptr}, {"top_k", nullptr}, {"gating", nullptr},
                                       {"losses", nullptr}, {"granularity", nullptr}}}}}};
  return {{"out", out},
          {"seeds", {0, 1}},
          {"config", base},
          {"runs", {{{"name", "lora"}, {"config", lora}}, {{"name", "mole"}, {"config", json::object()}}}},
          {"eval", {{{"name", "vqa"}, {"questions", s.data + "/eval/llava_questions.jsonl"},
                     {"annotations", s.data + "/eval/vqav2_annotations.json"}, {"images", s.data + "/images/eval"}},
                    {{"name", "mc"}, {"questions", s.data + "/eval/mc_questions.jsonl"},
                     {"annotations", s.data + "/eval/mc_problems.json"}, {"images", s.data + "/images/eval"},
                     {"metric", "scienceqa"}},
                    {{"name", "text"}, {"questions", s.data + "/eval/text_questions.jsonl"},
                     {"annotations", s.data + "/eval/text_annotations.json"}, {"images", s.data},
                     {"text", true}}}},
          {"max_new_tokens", 4}};
}

}  // namespace

TEST_CASE("compare config: mistakes are errors naming the key, before anything trains", "[unit][compare]") {
  const std::string out = test::scratch_dir("compare_config");
  json good = small_compare(out);
  CHECK_NOTHROW(CompareConfig::from_json(good, "c.json"));
  auto refused = [&](json j, const std::string& says) {
    try {
      CompareConfig::from_json(j, "c.json");
      FAIL("accepted: " << j.dump());
    } catch (const ConfigError& e) {
      CHECK_THAT(e.what(), Contains(says));
    }
  };
  json typo = good;
  typo["runs"][1]["config"] = {{"model", {{"adapter", {{"n_expert", 4}}}}}};
  refused(typo, "n_expert");  // inside a run's patch: found by reading that run's config now
  json twice = good;
  twice["runs"][1]["name"] = "lora";
  refused(twice, "used twice");
  json seeded = good;
  seeded["config"]["run"]["seed"] = 3;
  refused(seeded, "run.seed");
  json no_seeds = good;
  no_seeds["seeds"] = json::array();
  refused(no_seeds, "seeds");
  json bad_baseline = good;
  bad_baseline["baseline"] = "lorra";
  refused(bad_baseline, "baseline");
  json unknown = good;
  unknown["seed"] = {0};
  refused(unknown, "did you mean 'seeds'");
  json missing = good;
  missing["eval"][1]["annotations"] = "/nonexistent/mc_problems.json";
  refused(missing, "eval[1].annotations: no such file");
  json bad_metric = good;
  bad_metric["eval"][0]["metric"] = "bleu";
  refused(bad_metric, "eval metric");
}

TEST_CASE("compare: 2 configs x 2 seeds train, score, aggregate and report", "[unit][compare]") {
  const std::string out = test::scratch_dir("compare_small");
  const CompareConfig c = CompareConfig::from_json(small_compare(out), "c.json");
  CompareOutcome o = run_compare(c);
  REQUIRE(o.report_written);
  CHECK(o.jobs == 5);  // base + 2 x 2
  CHECK(o.ran == 5);
  CHECK(o.missing.empty());
  for (const char* f : {"results.json", "report.md", "report.html", "loss_curves.png", "base/compare_result.json",
                        "runs/lora/seed0/final/model.json", "runs/mole/seed1/eval/mc_answers.jsonl",
                        "runs/mole/seed1/eval/vqa_scores.json"})
    CHECK(fs::exists(out + "/" + f));
  const json r = read_json_file(out + "/results.json");
  CHECK(r["baseline"] == "lora");

  // the aggregate is the hand arithmetic over the per-seed numbers of the jobs
  std::map<std::string, std::vector<double>> vqa;
  for (const json& j : r["jobs"])
    if (j["job"] != "base") vqa[j["name"]].push_back(j["sets"]["vqa"]["overall"].get<double>());
  REQUIRE(vqa["mole"].size() == 2);
  const json& mole_vqa = r["stats"]["mole"]["sets"]["vqa"]["overall"];
  const double mean = (vqa["mole"][0] + vqa["mole"][1]) / 2;
  CHECK(mole_vqa["mean"].get<double>() == Approx(mean));
  if (vqa["mole"][0] != vqa["mole"][1]) {
    const double sd = std::fabs(vqa["mole"][0] - vqa["mole"][1]) / std::sqrt(2.0);
    CHECK(mole_vqa["hi"].get<double>() == Approx(mean + 12.7062047 * sd / std::sqrt(2.0)));
  }
  const json& paired = r["stats"]["mole"]["paired"]["vqa"]["overall"];
  CHECK(paired["mean"].get<double>() ==
        Approx((vqa["mole"][0] - vqa["lora"][0] + vqa["mole"][1] - vqa["lora"][1]) / 2).margin(1e-9));
  CHECK_FALSE(r["stats"]["lora"].contains("paired"));  // the baseline is not paired against itself
  CHECK(r["stats"]["mole"].contains("retention"));     // the text set, against the untuned base
  CHECK(r["stats"]["mole"]["curve"]["step"].size() == 2);  // steps 2 and 4, logged by both seeds
  CHECK(r["stats"]["mole"]["active_params"].get<int64_t>() < r["stats"]["mole"]["trainable_params"].get<int64_t>());
  CHECK(r["stats"]["lora"]["active_params"] == r["stats"]["lora"]["trainable_params"]);
  CHECK(r["stats"]["mole"]["reached"].get<int64_t>() == 2);  // the default threshold: every run reached it
  CHECK(r["floor"]["mc"]["families"].contains("mc"));
  CHECK(r["families"]["vqa"].size() >= 2);

  const std::string md = [&] {
    std::ifstream in(out + "/report.md");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  CHECK_THAT(md, Contains("What the intervals allow one to conclude"));
  CHECK_THAT(md, Contains("mole vs lora on vqa"));
  CHECK_THAT(md, Contains("best constant answer"));
  CHECK_THAT(md, Contains("option letter"));

  // a second start finds every job done and changes nothing
  const auto stamp = fs::last_write_time(out + "/runs/lora/seed0/compare_result.json");
  CompareOutcome again = run_compare(c);
  CHECK(again.ran == 0);
  CHECK(again.report_written);
  CHECK(fs::last_write_time(out + "/runs/lora/seed0/compare_result.json") == stamp);
}

TEST_CASE("compare resume: an interrupted run continues from its checkpoint to the same result", "[unit][compare]") {
  const std::string out = test::scratch_dir("compare_resume");
  json j = small_compare(out);
  j["seeds"] = {0};
  j["runs"].erase(0);  // mole only
  const CompareConfig c = CompareConfig::from_json(j, "c.json");
  REQUIRE(run_compare(c).report_written);
  const std::string run = out + "/runs/mole/seed0";
  const json first = read_json_file(run + "/compare_result.json");

  // as if killed after the checkpoint of step 2: no final/, no result, the log and checkpoints of steps 2 and 4
  // cut back to step 2
  fs::remove_all(run + "/final");
  fs::remove(run + "/compare_result.json");
  fs::remove(out + "/results.json");
  fs::remove_all(run + "/checkpoints/step-0000004");
  REQUIRE(fs::exists(run + "/checkpoints/step-0000002/trainer_state.json"));
  write_json_file(run + "/checkpoints/latest", {{"checkpoint", "step-0000002"}, {"step", 2}});
  CompareOutcome o = run_compare(c);
  CHECK(o.ran == 1);  // the base kept its result
  REQUIRE(o.report_written);
  const json second = read_json_file(run + "/compare_result.json");
  CHECK(second["resumed"] == true);
  CHECK(second["sets"] == first["sets"]);  // exact resume: the same model, the same answers
  CHECK(second["log"]["curve"] == first["log"]["curve"]);

  // a compare config that no longer matches a trained run is refused, naming the change
  json changed = j;
  changed["config"]["optim"]["lr"] = 1e-2;
  fs::remove(run + "/compare_result.json");
  try {
    run_compare(CompareConfig::from_json(changed, "c.json"));
    FAIL("a changed config was accepted");
  } catch (const ConfigError& e) {
    CHECK_THAT(e.what(), Contains("optim.lr"));
  }
}

TEST_CASE("compare: a job claimed by another process is left to it, and the report waits for it", "[unit][compare]") {
  const std::string out = test::scratch_dir("compare_shared");
  json j = small_compare(out);
  j["seeds"] = {0};
  j["untuned"] = "none";
  const CompareConfig c = CompareConfig::from_json(j, "c.json");
  fs::create_directories(out + "/locks");
  // another process holds mole/seed0
  const int fd = ::open((out + "/locks/mole.seed0.lock").c_str(), O_RDWR | O_CREAT, 0644);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  // flock locks belong to the open file description: a second open in this process conflicts as another
  // process's would
  CompareOutcome o = run_compare(c);
  CHECK(o.ran == 1);
  CHECK(o.missing == std::vector<std::string>{"mole/seed0"});
  CHECK_FALSE(o.report_written);
  CHECK_FALSE(fs::exists(out + "/results.json"));
  CHECK_THROWS_AS(run_compare(c, {false, true}), ConfigError);  // --report-only with a job missing
  ::close(fd);  // the other process ends (or dies): the job is free again
  CompareOutcome later = run_compare(c);
  CHECK(later.ran == 1);
  CHECK(later.report_written);
  CHECK(read_json_file(out + "/results.json")["base"].is_null());
}
