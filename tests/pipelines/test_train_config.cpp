// run.json read through its field lists (pipelines/train_config.h): a misspelt key at any depth is an error that
// names the dotted key and the nearest known name; --print-config shows every resolved value, the adapter's
// defaults included; `mole train --help` lists the fields.
#include <catch2/catch.hpp>

#include <string>

#include "core/json_config.h"
#include "pipelines/train_config.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;

namespace {

json minimal_finetune() {
  return {{"stage", "finetune"},
          {"out", "runs/x"},
          {"model", {{"base", "base_dir"}, {"adapter", {{"kind", "mole"}, {"rank", 4}}}}},
          {"data", {{"train", "d.json"}}}};
}

std::string error_of(const json& j) {
  try {
    TrainConfig::from_json(j, "run.json");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("train config: a typo at any depth names the dotted key and the nearest known one", "[unit][train]") {
  struct Typo {
    const char* assignment;
    const char* key;
    const char* nearest;
  };
  for (const Typo& t : {Typo{"model.adapter.rnak=4", "model.adapter.rnak", "model.adapter.rank"},
                        Typo{"model.adapter.n_expert=8", "model.adapter.n_expert", "model.adapter.n_experts"},
                        Typo{"model.adapter.losses.swich_aux=0.01", "model.adapter.losses.swich_aux",
                             "model.adapter.losses.switch_aux"},
                        Typo{"optim.lrr=1e-3", "optim.lrr", "optim.lr"},
                        Typo{"data.batchsize=8", "data.batchsize", "data.batch_size"},
                        Typo{"run.sead=1", "run.sead", "run.seed"},
                        Typo{"stag=align", "stag", "stage"}}) {
    INFO(t.assignment);
    json j = minimal_finetune();
    apply_override(j, t.assignment);
    const std::string message = error_of(j);
    CHECK_THAT(message, Contains("run.json") && Contains(std::string("unknown key '") + t.key + "'") &&
                            Contains(std::string("did you mean '") + t.nearest + "'"));
  }
  // far from every known name: the known names of that level are listed instead
  json j = minimal_finetune();
  apply_override(j, "optim.zzzzzzzzzz=1");
  CHECK_THAT(error_of(j), Contains("unknown key 'optim.zzzzzzzzzz'") && Contains("known here:") &&
                              Contains("grad_accum"));
}

TEST_CASE("train config: wrong types and values name the dotted key", "[unit][train]") {
  json j = minimal_finetune();
  apply_override(j, "data.batch_size=2.9");  // a float where an integer belongs is not truncated
  CHECK_THAT(error_of(j), Contains("data.batch_size") && Contains("an integer"));
  j = minimal_finetune();
  apply_override(j, "model.adapter.gating=top1");
  CHECK_THAT(error_of(j), Contains("model.adapter.gating") && Contains("topk_softmax"));
  j = minimal_finetune();
  apply_override(j, "model.adapter.top_k=9");
  CHECK_THAT(error_of(j), Contains("model.adapter.top_k") && Contains("1..n_experts"));
  j = minimal_finetune();
  apply_override(j, "model.adapter.losses.load=-1");
  CHECK_THAT(error_of(j), Contains("model.adapter.losses.load") && Contains(">= 0"));
  j = minimal_finetune();
  apply_override(j, "stage=distill");
  CHECK_THAT(error_of(j), Contains("stage") && Contains("pretrain, align, finetune"));
  j = minimal_finetune();
  apply_override(j, "model.adapter.target_regex=(");
  CHECK_THAT(error_of(j), Contains("model.adapter.target_regex") && Contains("regular expression"));
  j = minimal_finetune();
  apply_override(j, "optim.bf16=false");  // a bool names the "false" member of the bf16 choices
  CHECK(TrainConfig::from_json(j, "run.json").optim.bf16 == Bf16Mode::kOff);
}

TEST_CASE("train --print-config prints every adapter field with its resolved value", "[unit][train]") {
  const std::string dir = mole::test::scratch_dir("print_config");
  write_json_file(dir + "/run.json", minimal_finetune());
  std::string out;
  REQUIRE(mole::test::run_command(mole::test::mole_bin() + " train --config " + dir +
                                      "/run.json --set model.adapter.n_experts=6 --print-config 2>/dev/null",
                                  &out) == 0);
  const json printed = json::parse(out);
  const json adapter = printed.at("model").at("adapter");
  const json defaults = AdapterConfig().to_json();
  for (const auto& [key, value] : defaults.items()) {
    INFO(key);
    REQUIRE(adapter.contains(key));
    if (key == "rank") CHECK(adapter[key] == 4);             // from the file
    else if (key == "n_experts") CHECK(adapter[key] == 6);   // from --set
    else CHECK(adapter[key] == value);                       // the default, shown resolved
  }
  CHECK(adapter.size() == defaults.size());
  CHECK(adapter.at("losses").contains("switch_aux"));      // nested options too
  CHECK(printed.at("data").at("template") == "vicuna_v1");  // the stage's default template
  CHECK(printed.at("optim").at("bf16") == "auto");
  // and what it prints reads back as the same config
  CHECK(TrainConfig::from_json(printed, "printed").to_json() == printed);
}

TEST_CASE("mole train --help documents every run.json field", "[unit][train]") {
  std::string out;
  REQUIRE(mole::test::run_command(mole::test::mole_bin() + " train --help", &out) == 0);
  for (const char* key : {"model.adapter.rank", "model.adapter.losses.switch_aux", "model.adapter.routing_mode",
                          "optim.lr", "data.batch_size", "run.save_every"})
    CHECK_THAT(out, Contains(key));
  CHECK_THAT(out, Contains("topk_softmax, softmax_topk, noisy_topk"));  // an enum's choices
}
