// `mole demo --quick`: the whole pipeline runs as one command, writes its report, results and pictures, and its
// numbers are sane: every tuned run answers the held-out short-answer VQA questions better than the untuned base.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "core/json_config.h"
#include "tests/test_util.h"

using namespace mole;
namespace fs = std::filesystem;

TEST_CASE("mole demo --quick runs end to end and tuning beats the untuned base", "[unit][demo]") {
  const std::string out = mole::test::scratch_dir("demo_quick");
  std::string log;
  const int status = mole::test::run_command(mole::test::mole_bin() + " demo --quick --out " + out, &log);
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  REQUIRE(status == 0);

  const json results = read_json_file(out + "/results.json");
  CHECK(results["wall_seconds"].get<double>() > 0);
  for (const char* run : {"base", "lora", "mole_learned", "mole_grouped"}) {
    INFO(run);
    REQUIRE(results["runs"].contains(run));
    const json& r = results["runs"][run];
    for (const char* key : {"vqa_accuracy", "text_accuracy"}) {
      CHECK(r[key].get<double>() >= 0.0);
      CHECK(r[key].get<double>() <= 100.0);
    }
    CHECK(r["per_family"].size() >= 5);
    CHECK(r["trainable_params"].get<int64_t>() > 0);
  }
  const double base = results["runs"]["base"]["vqa_accuracy"].get<double>();
  for (const char* run : {"lora", "mole_learned", "mole_grouped"}) {
    INFO(run << " VQA " << results["runs"][run]["vqa_accuracy"] << " vs base " << base);
    CHECK(results["runs"][run]["vqa_accuracy"].get<double>() > base);
  }
  // The same active adapter parameters per token for the three adapters, up to the routers' own weights.
  const double lora = results["runs"]["lora"]["active_params"].get<double>();
  for (const char* run : {"mole_learned", "mole_grouped"}) {
    const double mole = results["runs"][run]["active_params"].get<double>();
    CHECK(mole >= lora);
    CHECK(mole < lora * 1.05);
  }

  for (const char* file : {"report.md", "report.html", "loss_curves.png", "routes/mole_learned/index.html",
                           "routes/mole_grouped/index.html", "routes/mole_grouped/heat_top1_image.png",
                           "runs/lora/final/adapter_peft/adapter_config.json", "eval/base/vqa_answers.jsonl"})
    CHECK(fs::exists(out + "/" + file));
}
