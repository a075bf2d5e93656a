// mole export against transformers and PEFT: a LoRA run exported merged (llava-hf) and as a PEFT adapter with
// its projector, loaded by LlavaProcessor + LlavaForConditionalGeneration (tests/reference/check_export.py),
// answers with mole's greedy tokens on a square and a non-square image; the chat templates mole writes render
// mole's prompts; MoLE exports the base and mole_adapter/, which --adapter puts back.
#include <catch2/catch.hpp>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "core/json_config.h"
#include "eval/answer.h"
#include "model/llava_export.h"
#include "tests/pipelines/tiny_training.h"

using namespace mole;
using namespace mole::test;
using Catch::Contains;
namespace fs = std::filesystem;
using Ids = std::vector<int64_t>;

namespace {

// `mole generate --print-ids`: the generated ids
Ids mole_generate(const std::string& args) {
  std::string out;
  REQUIRE(run_command(mole_bin() + " generate " + args + " --max-new-tokens 6 --print-ids", &out) == 0);
  const size_t at = out.rfind("ids:");
  REQUIRE(at != std::string::npos);
  std::istringstream in(out.substr(at + 4));
  Ids ids;
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

std::string write_picture(const std::string& path, int width, int height) {
  cv::Mat bgr(height, width, CV_8UC3, cv::Scalar(30, 60, 200));
  cv::circle(bgr, {width / 3, height / 2}, std::min(width, height) / 4, cv::Scalar(250, 250, 250), -1);
  REQUIRE(cv::imwrite(path, bgr));
  return path;
}

json lora_config(const std::string& out) {
  json c = finetune_config(out);
  c["model"]["adapter"] = {{"kind", "lora"}, {"targets", {"q_proj", "v_proj", "gate_proj", "down_proj"}},
                           {"rank", 4}, {"alpha", 16.0}, {"dropout", 0.0}};
  c["optim"]["lr"] = 2e-2;  // enough for the adapter and projector to change what the model says
  return c;
}

}  // namespace

TEST_CASE("mole export: transformers and PEFT load the LoRA run and answer with mole's greedy tokens",
          "[reference][export]") {
  const Setup& s = setup();
  const std::string dir = scratch_dir("export_lora");
  run_training(TrainConfig::from_json(lora_config(dir + "/run"), "lora"), false);
  std::string out;
  REQUIRE(run_command(mole_bin() + " export --model " + dir + "/run --out " + dir + "/hf --merge", &out) == 0);
  REQUIRE(run_command(mole_bin() + " export --model " + dir + "/run --out " + dir + "/peft", &out) == 0);
  CHECK(run_command(mole_bin() + " export --model " + dir + "/run --out " + dir + "/peft", &out) != 0);  // exists
  CHECK_THAT(out, Contains("exists already"));
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "preprocessor_config.json",
                        "processor_config.json", "chat_template.jinja"})
    CHECK(fs::exists(dir + "/hf/" + f));
  CHECK(read_json_file(dir + "/peft/adapter_config.json")["modules_to_save"] == json::array({"multi_modal_projector"}));

  const std::vector<std::string> images = {write_picture(dir + "/square.png", 32, 32),
                                           write_picture(dir + "/wide.png", 48, 20)};
  const std::string question = "What colour is the circle?";
  json cases = json::array();
  std::vector<Ids> mole_ids, adapter_ids;
  for (const std::string& image : images) {
    cases.push_back({{"image", image}, {"question", question}, {"max_new_tokens", 6}});
    mole_ids.push_back(mole_generate("--model " + dir + "/run --image " + image + " --prompt '" + question + "'"));
    // the PEFT folder put back on the base by mole: the same answer
    // (the base is a pretraining run, whose own template is plain: the adapter's is given)
    adapter_ids.push_back(mole_generate("--model " + s.base + " --adapter " + dir + "/peft --template vicuna_v1 --image " +
                                        image + " --prompt '" + question + "'"));
    // the merged llava-hf folder run by mole
    CHECK(mole_generate("--model " + dir + "/hf --image " + image + " --prompt '" + question + "'") == mole_ids.back());
  }
  CHECK(adapter_ids == mole_ids);
  // the base alone answers otherwise: the comparison can tell the adapter's work apart
  CHECK(mole_generate("--model " + s.base + " --template vicuna_v1 --image " + images[0] + " --prompt '" + question +
                      "'") != mole_ids[0]);

  write_json_file(dir + "/cases.json", cases);
  const int rc = run_command(std::string(MOLE_PYTHON) + " " + source_dir() + "/tests/reference/check_export.py --cases " +
                                 dir + "/cases.json --out " + dir + "/ref.json --llava " + dir + "/hf --peft " + dir +
                                 "/peft --base " + s.base,
                             &out);
  INFO(out);
  REQUIRE(rc == 0);
  const json ref = read_json_file(dir + "/ref.json");
  INFO("transformers " << ref["transformers"].get<std::string>());
  // a pretraining run's final/ is a llava-hf folder LlavaProcessor loads too (processor_config.json, chat template)
  CHECK(fs::exists(s.base + "/processor_config.json"));
  const int rc_base = run_command(std::string(MOLE_PYTHON) + " " + source_dir() + "/tests/reference/check_export.py --cases " +
                                      dir + "/cases.json --out " + dir + "/ref_base.json --llava " + s.base,
                                  &out);
  INFO(out);
  REQUIRE(rc_base == 0);
  const json ref_base = read_json_file(dir + "/ref_base.json");
  CHECK(ref_base["llava"]["generated"][0].get<Ids>() ==
        mole_generate("--model " + s.base + " --image " + images[0] + " --prompt '" + question + "'"));
  // the tokenizer.json mole writes is the one transformers converts tokenizer.model to
  CHECK(ref["tokenizer_json_differs"] == json::array());
  const TrainedModel m = load_trained(dir + "/run");
  for (size_t i = 0; i < images.size(); ++i) {
    INFO("image " << images[i]);
    // the processor's prompt ids (its chat template, tokenizer and image expansion) are mole's own
    CHECK(ref["llava"]["input_ids"][i].get<Ids>() ==
          generation_prompt_ids(question, true, *m.tokenizer, m.conversation_template,
                                m.model->config.n_image_features()));
    CHECK(ref["llava"]["generated"][i].get<Ids>() == mole_ids[i]);
    CHECK(ref["peft"]["generated"][i].get<Ids>() == mole_ids[i]);
  }
}

TEST_CASE("mole export: MoLE gives the base with its projector and mole_adapter/, which --adapter puts back",
          "[unit][export]") {
  const Setup& s = setup();
  const std::string dir = scratch_dir("export_mole");
  json c = finetune_config(dir + "/run");
  c["optim"]["lr"] = 2e-2;
  run_training(TrainConfig::from_json(c, "mole"), false);
  std::string out;
  CHECK(run_command(mole_bin() + " export --model " + dir + "/run --out " + dir + "/merged --merge", &out) != 0);
  CHECK_THAT(out, Contains("cannot be merged"));
  REQUIRE(run_command(mole_bin() + " export --model " + dir + "/run --out " + dir + "/hf", &out) == 0);
  CHECK_THAT(out, Contains("llava-hf + mole_adapter"));
  const std::string image = write_picture(dir + "/wide.png", 40, 24);
  const Ids direct = mole_generate("--model " + dir + "/run --image " + image + " --prompt 'What is it?'");
  CHECK(mole_generate("--model " + dir + "/hf --adapter " + dir + "/hf/mole_adapter --image " + image +
                      " --prompt 'What is it?'") == direct);
  // eval-vqa takes the adapter the same way, and shows its progress
  REQUIRE(run_command(mole_bin() + " eval-vqa --model " + dir + "/hf --adapter " + dir + "/hf/mole_adapter --questions " +
                          s.data + "/eval/llava_questions.jsonl --images " + s.data + "/images/eval --out " + dir +
                          "/eval --limit 3 --batch-size 2 --max-new-tokens 4",
                      &out) == 0);
  CHECK_THAT(out, Contains("answered 2 / 3") && Contains("answered 3 / 3"));
  // mole info reads the run, its final folder and a checkpoint
  REQUIRE(run_command(mole_bin() + " info " + dir + "/run", &out) == 0);
  CHECK_THAT(out, Contains("a mole run") && Contains("adapter       mole") && Contains("finished      yes"));
  REQUIRE(run_command(mole_bin() + " info " + dir + "/run --json", &out) == 0);
  const json info = json::parse(out.substr(out.find('{')));
  CHECK(info["run"]["checkpoints"] == json::array({"step-0000006"}));
  CHECK(info["trained"]["parameters"].get<int64_t>() > 0);
  REQUIRE(run_command(mole_bin() + " info " + dir + "/run/checkpoints/step-0000006 --json", &out) == 0);
  CHECK(json::parse(out.substr(out.find('{')))["trainer_state"]["step"] == 6);
  // a model that carries adapters takes no second one
  CHECK(run_command(mole_bin() + " generate --model " + dir + "/run --adapter " + dir + "/hf/mole_adapter --prompt x", &out) != 0);
  CHECK_THAT(out, Contains("carries adapters already"));
}

TEST_CASE("the chat_template.jinja mole export writes renders mole's prompt for every template",
          "[reference][export][template]") {
  const std::vector<std::vector<Turn>> conversations = {
      {{"human", "<image>\nWhat colour is the star?"}, {"gpt", "The star is green."}, {"human", "And the cube?"},
       {"gpt", "Red."}},
      {{"system", "Answer in one word."}, {"human", "Colour of grass?"}, {"gpt", "Green."}},
      {{"human", "<image>\n<image>\nSame shape?"}, {"gpt", "No."}},
  };
  json in = json::array();
  std::vector<std::string> expected;
  for (Template t : {Template::kVicunaV1, Template::kLlavaLlama2, Template::kPlain, Template::kMistralInstruct,
                     Template::kChatml, Template::kLlama3})
    for (const auto& turns : conversations) {
      if (t == Template::kPlain && turns.size() != 2) continue;
      json messages = json::array();
      for (const Turn& turn : turns) {
        json content = turn.text;
        if (turn.text.rfind("<image>\n", 0) == 0) {  // images as parts, the way processors' users write them
          content = json::array();
          std::string rest = turn.text;
          while (rest.rfind("<image>\n", 0) == 0) {
            content.push_back({{"type", "image"}});
            rest = rest.substr(8);
          }
          content.push_back({{"type", "text"}, {"text", rest}});
        }
        messages.push_back({{"role", turn.role == "human" ? "user" : turn.role == "gpt" ? "assistant" : "system"},
                            {"content", content}});
      }
      in.push_back({{"template", template_name(t)}, {"jinja", chat_template_jinja(t)}, {"messages", messages}});
      expected.push_back(prompt_text(turns, t));
    }
  const std::string dir = scratch_dir("export_chat_templates");
  write_json_file(dir + "/conversations.json", in);
  std::string out;
  const int rc = run_command(std::string(MOLE_PYTHON) + " " + source_dir() +
                                 "/tests/reference/check_chat_templates.py --tokenizer " + tiny_chat_tokenizer_dir() +
                                 " --conversations " + dir + "/conversations.json --out " + dir + "/out.json",
                             &out);
  INFO(out);
  REQUIRE(rc == 0);
  const json ref = read_json_file(dir + "/out.json");
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO(in[i]["template"].get<std::string>() << " conversation " << i);
    CHECK(ref["text"][i].get<std::string>() == expected[i]);
  }
}
