// run.json read through its field lists (pipelines/train_config.h): a misspelt key at any depth is an error that
// names the dotted key and the nearest known name; --print-config shows every resolved value, the adapter's
// defaults included; `mole train --help` lists the fields.
#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "core/json_config.h"
#include "pipelines/train_config.h"
#include "vision/clip_vit.h"
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

// One bad assignment and what the error must say, besides the file name.
struct BadSetting {
  const char* assignment;
  std::vector<std::string> says;
};

TEST_CASE("train config: a typo at any depth names the dotted key and the nearest known one", "[unit][train]") {
  const std::vector<BadSetting> typos = {
      {"model.adapter.rnak=4", {"unknown key 'model.adapter.rnak'", "did you mean 'model.adapter.rank'"}},
      {"model.adapter.n_expert=8", {"unknown key 'model.adapter.n_expert'", "did you mean 'model.adapter.n_experts'"}},
      {"model.adapter.losses.swich_aux=0.01",
       {"unknown key 'model.adapter.losses.swich_aux'", "did you mean 'model.adapter.losses.switch_aux'"}},
      {"optim.lrr=1e-3", {"unknown key 'optim.lrr'", "did you mean 'optim.lr'"}},
      {"data.batchsize=8", {"unknown key 'data.batchsize'", "did you mean 'data.batch_size'"}},
      {"run.sead=1", {"unknown key 'run.sead'", "did you mean 'run.seed'"}},
      {"stag=align", {"unknown key 'stag'", "did you mean 'stage'"}},
      // far from every known name: the names known at that level are listed instead
      {"optim.zzzzzzzzzz=1", {"unknown key 'optim.zzzzzzzzzz'", "known here:", "grad_accum"}}};
  // wrong types and values name the dotted key too
  const std::vector<BadSetting> values = {
      {"data.batch_size=2.9", {"data.batch_size", "an integer"}},  // not truncated to 2
      {"model.adapter.gating=top1", {"model.adapter.gating", "topk_softmax"}},
      {"model.adapter.top_k=9", {"model.adapter.top_k", "1..n_experts"}},
      {"model.adapter.losses.load=-1", {"model.adapter.losses.load", ">= 0"}},
      {"stage=distill", {"stage", "pretrain, align, finetune"}},
      {"model.adapter.target_regex=(", {"model.adapter.target_regex", "regular expression"}},
      {"run.device=gpu", {"run.device", "cpu, cuda or cuda:N", "'gpu'"}},
      {"run.device=cuda:x", {"run.device", "'cuda:x'"}},
      {"model.dtype=float16", {"model.dtype", "float32 or bfloat16"}}};
  for (const auto* list : {&typos, &values})
    for (const BadSetting& bad : *list) {
      INFO(bad.assignment);
      json j = minimal_finetune();
      apply_override(j, bad.assignment);
      const std::string message = error_of(j);
      CHECK_THAT(message, Contains("run.json"));
      for (const std::string& part : bad.says) CHECK_THAT(message, Contains(part));
    }
  json j = minimal_finetune();
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

// The bad-option table for run.json and --set: every numeric field of the run config (the adapter's and the balance
// losses' included) and of the vision config, at negative, zero, fractional, huge and non-numeric values. Each is
// an error naming the dotted key, or accepted and then inside the range the field list declares (and --help shows).
TEST_CASE("bad-option table: every numeric config field refuses what is outside its declared range, naming it",
          "[unit][train]") {
  const std::vector<std::string> trials = {"-5", "-1", "0", "2.5", "1e300", "-1e300", "99999999999999999999", "\"abc\"",
                                           "true"};
  int64_t fields = 0, refused = 0, accepted = 0;
  for (const FieldDoc& row : describe_fields<TrainConfig>()) {
    if (!row.numeric) continue;
    ++fields;
    INFO(row.key);
    REQUIRE(row.bounds.has_value());  // no numeric field without a range
    const bool list = row.type.rfind("list of", 0) == 0;
    for (const std::string& text : trials) {
      INFO(text);
      json j = minimal_finetune();
      if (row.key.rfind("model.adapter.", 0) == 0) j["model"]["adapter"]["n_experts"] = 4;
      apply_override(j, row.key + "=" + (list ? "[" + text + "]" : text));
      const std::string message = error_of(j);
      if (message == "(no error)") {
        ++accepted;
        const json value = json::parse(text);
        REQUIRE(value.is_number());
        CHECK(row.bounds->contains(value.get<double>()));
        if (row.integer) CHECK(value.is_number_integer());
      } else {
        ++refused;
        CHECK_THAT(message, Contains("run.json: " + row.key));
      }
    }
  }
  CHECK(fields >= 40);
  CHECK(refused > accepted);
  CHECK_THAT(error_of([] {
               json j = minimal_finetune();
               j["model"]["adapter"]["n_experts"] = 1024;
               j["model"]["adapter"]["rank"] = 4096;  // each in range, their product 4M too wide for one layer
               return j;
             }()),
             Contains("model.adapter.n_experts: x rank is 1024 x 4096"));

  for (const FieldDoc& row : describe_fields<VisionConfig>()) {
    if (!row.numeric) continue;
    INFO(row.key);
    REQUIRE(row.bounds.has_value());
    for (const std::string& text : trials) {
      INFO(text);
      json vision = {{"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 1},
                     {"num_attention_heads", 2}, {"image_size", 32}, {"patch_size", 16}};
      vision[row.key] = json::parse(text);
      try {
        VisionConfig::from_json(vision, FieldPath{"config.json", "vision_config"});
        CHECK(row.bounds->contains(vision[row.key].get<double>()));
      } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Contains("config.json: vision_config." + row.key));
      }
    }
  }
}
