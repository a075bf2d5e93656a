// `mole demo --quick`: the whole pipeline runs as one command (data, pretrain, align, `mole compare` of three
// adapters over two seeds, routes), writes its report, results and pictures, and shows a real learning signal:
// the tuned runs answer the held-out short-answer VQA questions clearly better than the untuned base and than the
// set's majority answer.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>

#include "core/json_config.h"
#include "tests/test_util.h"

using namespace mole;
namespace fs = std::filesystem;

TEST_CASE("mole demo --quick runs end to end and tuning learns more than a constant answer", "[unit][demo]") {
  const std::string out = mole::test::scratch_dir("demo_quick");
  std::string log;
  const int status = mole::test::run_command(mole::test::mole_bin() + " demo --quick --out " + out, &log);
  INFO(log.substr(log.size() > 4000 ? log.size() - 4000 : 0));
  REQUIRE(status == 0);

  const json results = read_json_file(out + "/results.json");
  CHECK(results["wall_seconds"].get<double>() > 0);
  REQUIRE(results["seeds"].size() == 2);
  const double base = results["base"]["sets"]["vqa"]["overall"].get<double>();
  const double majority = results["floor"]["vqa"]["majority"]["overall"].get<double>();
  double tuned = 0;
  for (const char* run : {"lora", "mole_learned", "mole_grouped"}) {
    INFO(run);
    REQUIRE(results["stats"].contains(run));
    const json& s = results["stats"][run];
    for (const char* set : {"vqa", "mc", "text"}) {
      const json& i = s["sets"][set]["overall"];
      CHECK(i["n"] == 2);
      CHECK(i["mean"].get<double>() >= 0.0);
      CHECK(i["mean"].get<double>() <= 100.0);
    }
    CHECK(s["sets"]["vqa"]["families"].size() >= 5);
    CHECK(s["trainable_params"].get<int64_t>() > 0);
    tuned += s["sets"]["vqa"]["overall"]["mean"].get<double>() / 3.0;
  }
  // the learning signal: the tuned runs' mean VQA over configs and seeds
  INFO("tuned mean VQA " << tuned << ", untuned base " << base << ", majority answer " << majority);
  CHECK(tuned >= base + 10.0);
  CHECK(tuned > majority);
  // The same active adapter parameters per token for the three adapters, up to the routers' own weights.
  const double lora = results["stats"]["lora"]["active_params"].get<double>();
  for (const char* run : {"mole_learned", "mole_grouped"}) {
    const double mole = results["stats"][run]["active_params"].get<double>();
    CHECK(mole >= lora);
    CHECK(mole < lora * 1.05);
    CHECK(results["stats"][run].contains("paired"));
  }

  for (const char* file : {"report.md", "report.html", "loss_curves.png", "routes/mole_learned/index.html",
                           "routes/mole_grouped/index.html", "routes/mole_grouped/heat_top1_image.png",
                           "runs/lora/seed0/final/adapter_peft/adapter_config.json", "base/eval/vqa_answers.jsonl",
                           "runs/mole_grouped/seed1/eval/mc_scores.json"})
    CHECK(fs::exists(out + "/" + file));
  // distinct images in the patch pictures
  CHECK(fs::exists(out + "/routes/mole_learned/patches_1.png"));
}
