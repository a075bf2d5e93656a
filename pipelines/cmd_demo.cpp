// mole demo [--out DIR] [--device cuda[:N]] [--quick]: the whole mission on data mole makes itself, in one command.
//   shapes data -> tokenizer -> pretrain a small LLaVA from scratch on captions -> align (projector) ->
//   `mole compare` of three finetunes with the same active adapter parameters (plain LoRA, MoLE learned routing,
//   MoLE modality-grouped routing) over several seeds, each scored with the untuned base on the held-out VQA,
//   multiple-choice and text-only sets -> routing pictures of the MoLE runs -> DIR/report.md, DIR/report.html and
//   DIR/results.json (means, 95% intervals over seeds, paired differences against LoRA).
// Every stage is the library code the separate commands run (make-data, train-tokenizer, train, compare, routes),
// so the demo is also their integration test. Sizes are chosen for two CPU cores: the full demo within 15
// minutes, --quick about 2.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include <torch/torch.h>

#include "core/json_config.h"
#include "data/shapes.h"
#include "eval/answer.h"
#include "eval/vqa_data.h"
#include "eval/routes.h"
#include "language/tokenizer.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"
#include "pipelines/compare.h"
#include "pipelines/compare_report.h"
#include "pipelines/trainer.h"
#include "report/charts.h"
#include "report/route_report.h"

namespace mole {

namespace fs = std::filesystem;

namespace {

struct DemoPlan {
  int64_t n_train, n_eval, n_text_train, n_text_eval, vocab;
  int64_t pretrain_steps, align_steps, finetune_steps, batch;
  double finetune_lr;
  std::vector<int64_t> seeds;
  int64_t max_vqa_questions, max_mc_questions, max_text_questions, max_new_tokens;
};

DemoPlan plan(bool quick) {
  if (quick) return {600, 50, 200, 40, 512, 600, 20, 400, 8, 3e-3, {0, 1}, 150, 50, 40, 12};
  return {2000, 200, 1000, 200, 768, 2000, 60, 600, 8, 2e-3, {0, 1, 2}, 600, 200, 200, 24};
}

// The small LLaVA trained from scratch: CLIP-style ViT on 64 px images (16 patches of 16 px) and a 4-layer
// LLaMA, about 1.4 M parameters. vocab_size and the special ids come from the tokenizer.
json small_llava_config() {
  return {{"model_type", "llava"},
          {"projector_hidden_act", "gelu"},
          {"vision_feature_layer", -1},
          {"vision_feature_select_strategy", "default"},
          {"vision_config", {{"model_type", "clip_vision_model"}, {"hidden_size", 128}, {"intermediate_size", 256},
                             {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"image_size", 64},
                             {"patch_size", 16}, {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5},
                             {"projection_dim", 128}}},
          {"text_config", {{"model_type", "llama"}, {"hidden_size", 128}, {"intermediate_size", 352},
                           {"num_hidden_layers", 4}, {"num_attention_heads", 4}, {"num_key_value_heads", 4},
                           {"max_position_embeddings", 512}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
                           {"tie_word_embeddings", false}, {"hidden_act", "silu"}}}};
}

// The three adapters, on every Linear of the language model (LLaVA's LoRA recipe targets them all): plain LoRA
// of rank 16; MoLE at FFN level with 4 experts of rank 16 and top-1 routing (LLaVA-MoLE's sparse top-1), so each
// token uses rank 16 in every FFN as with LoRA, and attention carries the same rank-16 LoRA in all three.
// modality_grouped gives experts 0-1 to text and 2-3 to image tokens. As merge patches over the shared config
// (pipelines/compare.h).
json adapters() {
  json lora = {{"kind", "lora"}, {"rank", 16}, {"alpha", 32.0}, {"dropout", 0.0}};
  json learned = {{"kind", "mole"}, {"granularity", "ffn"}, {"rank", 16}, {"alpha", 32.0}, {"dropout", 0.0},
                  {"n_experts", 4}, {"top_k", 1}, {"routing_mode", "learned"}, {"losses", {{"switch_aux", 0.01}}}};
  json grouped = learned;
  grouped["routing_mode"] = "modality_grouped";
  grouped["expert_modality"] = {0, 0, 1, 1};
  grouped["losses"] = {{"switch_aux", 0.01}, {"per_modality", true}};
  json runs = json::array();
  for (const auto& [name, adapter] : {std::pair<const char*, json>{"lora", lora}, {"mole_learned", learned},
                                      {"mole_grouped", grouped}})
    runs.push_back({{"name", name}, {"config", {{"model", {{"adapter", adapter}}}}}});
  return runs;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void stage(const char* name, double t) { std::fprintf(stderr, "\n== %s (%.0f s so far)\n", name, t); }

std::string fixed(double v, int digits = 1) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

}  // namespace

int cmd_demo(int argc, char** argv) {
  Args args("demo",
            "The whole pipeline on the embedded synthetic data: data, tokenizer, pretrain, align, finetune with "
            "LoRA / MoLE learned / MoLE modality-grouped, evaluation before and after, routing pictures, report.");
  args.option("out", "output folder", "demo_out")
      .option("device", "cpu, cuda or cuda:N: where every stage trains and evaluates", "cpu")
      .flag("quick", "a smaller run (under 3 minutes), for tests");
  if (!args.parse(argc, argv)) return 0;
  const bool quick = args.has("quick");
  const DemoPlan p = plan(quick);
  const std::string out = fs::absolute(args.get("out")).string();
  const std::string device = args.get("device");
  const auto t0 = std::chrono::steady_clock::now();
  fs::create_directories(out);
  // mole's default: a LibTorch thread per core (MOLE_THREADS overrides), beside the loader's one worker. Measured
  // (README "Threads"): on the 2-vCPU Intel VM finetuning this model runs 1.44x faster with 2 threads than with 1;
  // on the 2-vCPU AMD VM of 2026-11 two threads were slower, where MOLE_THREADS=1 is the setting.
  const int64_t cores = std::max<int64_t>(1, int64_t(std::thread::hardware_concurrency()));
  const int64_t threads = 0;

  stage("data: mole make-data shapes", seconds_since(t0));
  const std::string data = out + "/data";
  ShapesOptions shapes;
  shapes.out_dir = data;
  shapes.n_train = p.n_train;
  shapes.n_eval = p.n_eval;
  shapes.n_text_train = p.n_text_train;
  shapes.n_text_eval = p.n_text_eval;
  make_shapes_dataset(shapes);

  stage("tokenizer: mole train-tokenizer", seconds_since(t0));
  const std::string tokenizer = out + "/tokenizer";
  {
    // The corpus plus the conversation template's fixed text, so the system prompt costs few tokens.
    std::ofstream corpus(out + "/tokenizer_corpus.txt");
    corpus << std::ifstream(data + "/corpus.txt").rdbuf();
    for (int i = 0; i < 8; ++i)
      corpus << template_system_prompt(Template::kVicunaV1) << " USER: What is it? ASSISTANT: A star.\n";
  }
  if (!fs::exists(tokenizer + "/tokenizer.model")) Tokenizer::train(out + "/tokenizer_corpus.txt", p.vocab, tokenizer);

  auto train = [&](const std::string& name, json config) {
    config["out"] = out + "/stages/" + name;  // (runs/ is the compare's)
    config["run"] = {{"seed", 0}, {"log_every", quick ? 10 : 25}, {"threads", threads}, {"progress", "lines"},
                     {"device", device}};
    config["data"]["workers"] = 1;
    config["data"]["images"] = data;
    TrainConfig c = TrainConfig::from_json(config, "demo " + name);
    RunFolderRules rules;
    rules.overwrite = true;  // the demo's runs are its own: a second demo in the same folder starts them over
    return run_training(c, false, {}, rules);
  };
  // Captions only: with the text corpus mixed in (4 of 5 samples text-only, the captions among them) the language
  // model learned the captions' prior and the vision tower stayed unused (every image captioned alike).
  stage("pretrain: a small LLaVA from scratch on captions", seconds_since(t0));
  train("pretrain", {{"stage", "pretrain"},
                     {"model", {{"tokenizer", tokenizer}, {"init", small_llava_config()}}},
                     {"data", {{"train", data + "/captions.json"},
                               {"template", "plain"}, {"max_len", 256}, {"batch_size", 16}}},
                     {"optim", {{"steps", p.pretrain_steps}, {"lr", 1e-3}, {"weight_decay", 0.01},
                                {"warmup_ratio", 0.05}}}});
  const std::string pretrained = out + "/stages/pretrain/final";

  stage("align: the projector on captions (LLaVA stage 1)", seconds_since(t0));
  train("align", {{"stage", "align"},
                  {"model", {{"base", pretrained}}},
                  {"data", {{"train", data + "/captions.json"}, {"template", "plain"}, {"max_len", 256},
                            {"batch_size", 16}}},
                  {"optim", {{"steps", p.align_steps}, {"lr", 1e-3}, {"warmup_ratio", 0.03}}}});
  const std::string aligned = out + "/stages/align/final";

  // LLaVA stage 2 three ways x seeds, scored with the untuned base on the same held-out sets (pipelines/compare.h)
  stage("finetune x seeds and eval-vqa: mole compare (LoRA, MoLE learned, MoLE grouped)", seconds_since(t0));
  json finetune = {{"stage", "finetune"},
                   {"model", {{"base", pretrained}, {"projector", aligned + "/projector.safetensors"},
                              {"train_projector", true}}},
                   {"data", {{"train", data + "/instruct.json"}, {"images", data}, {"template", "vicuna_v1"},
                             {"max_len", 256}, {"batch_size", p.batch}, {"workers", 1}}},
                   {"optim", {{"steps", p.finetune_steps}, {"lr", p.finetune_lr}, {"warmup_ratio", 0.05}}},
                   {"run", {{"log_every", quick ? 20 : 25}, {"threads", threads}, {"progress", "lines"},
                            {"device", device}}}};
  auto eval_set = [&](const char* name, const std::string& questions, const std::string& annotations,
                      const std::string& images, int64_t limit, const char* metric, bool text) {
    return json{{"name", name}, {"questions", questions}, {"annotations", annotations}, {"images", images},
                {"limit", limit}, {"metric", metric}, {"text", text}};
  };
  json compare = {
      {"out", out},
      {"seeds", p.seeds},
      {"baseline", "lora"},
      {"config", finetune},
      {"runs", adapters()},
      {"eval", {eval_set("vqa", data + "/eval/llava_questions.jsonl", data + "/eval/vqav2_annotations.json",
                         data + "/images/eval", p.max_vqa_questions, "vqav2", false),
                eval_set("mc", data + "/eval/mc_questions.jsonl", data + "/eval/mc_problems.json",
                         data + "/images/eval", p.max_mc_questions, "scienceqa", false),
                eval_set("text", data + "/eval/text_questions.jsonl", data + "/eval/text_annotations.json", data,
                         p.max_text_questions, "vqav2", true)}},
      {"untuned", aligned},
      {"max_new_tokens", p.max_new_tokens}};
  const CompareConfig cc = CompareConfig::from_json(compare, "demo compare");
  CompareOptions co;
  co.overwrite = true;  // the demo's runs are its own: a second demo in the same folder starts them over
  const CompareOutcome outcome = run_compare(cc, co);
  if (!outcome.report_written) throw std::runtime_error("demo: the compare left jobs without results");
  json results = outcome.results;

  stage("routes: the MoLE runs' routing per layer, expert and modality (seed 0)", seconds_since(t0));
  const auto vqa_questions = read_llava_questions(data + "/eval/llava_questions.jsonl");
  std::vector<HtmlSection> sections;
  std::string routes_md = "## Routing (seed 0)\n\n";
  for (const std::string name : {"mole_learned", "mole_grouped"}) {
    const std::string run = cc.run_dir(name, p.seeds.front());
    TrainedModel m = load_trained(run, torch::Device(device));
    RouteOptions ro;
    ro.max_samples = quick ? 24 : 96;
    ro.image_dir = data + "/images/eval";
    ro.by_family = true;  // routing by task family beside modality
    RouteCollection routes = collect_routes(m, vqa_questions, ro);
    RouteReportOptions report;
    report.title = "Expert routing: " + name + " (seed " + std::to_string(p.seeds.front()) + ")";
    report.metrics_log = run + "/metrics.jsonl";
    report.patch_grids = routes.patch_grids;
    report.by_family = routes.by_family;
    RouteReport written = write_route_report(out + "/routes/" + name, routes.stats, report);
    HtmlSection s("Routing: " + name, "The whole routing page, with every figure explained: routes/" + name +
                                          "/index.html. The figures of its first sections:");
    routes_md += "[" + name + ": routes/" + name + "/index.html](routes/" + name + "/index.html)\n\n";
    for (const auto& png : written.pngs) {
      const std::string rel = fs::relative(png, out).string();
      const std::string file = fs::path(png).filename().string();
      std::string caption = name + ": ";
      if (file.rfind("mix_", 0) == 0) caption += "the share of text and of image tokens each expert takes, per layer";
      else if (file.rfind("heat_", 0) == 0) caption += "layer x expert share map (" + file + ")";
      else if (file.rfind("patches_", 0) == 0) caption += "an evaluation image, each patch coloured by its top expert";
      else if (file.rfind("entropy", 0) == 0) caption += "router entropy per layer against a uniform router's ln E";
      else if (file == "information.png") caption += "how much the top-1 expert tells about modality and task family";
      else if (file == "family_mix.png") caption += "the top-1 expert mix of each task family, per layer";
      else caption += file;
      s.figures.push_back({rel, caption});
    }
    sections.push_back(s);
  }

  stage("report", seconds_since(t0));
  results["wall_seconds"] = seconds_since(t0);
  results["quick"] = quick;
  results["machine"] = {{"cores", cores}, {"torch_threads", threads > 0 ? threads : int64_t(torch::get_num_threads())}};
  ReportExtras extras;
  extras.title = "mole demo";
  extras.lead_md = "Wall time " + fixed(results["wall_seconds"].get<double>(), 0) + " s on " + std::to_string(cores) +
                   " cores" + (quick ? " (--quick)" : "") + ": shapes data, a LLaVA pretrained from scratch (" +
                   std::to_string(p.pretrain_steps) + " steps) and aligned, then " + std::to_string(p.finetune_steps) +
                   " finetuning steps per run.";
  extras.sections = sections;
  extras.md = routes_md;
  write_compare_report(cc, results, extras);
  // the headline table: overall accuracy per set, mean and 95% interval over seeds
  std::string md = "| run | vqa | mc | text |\n|---|---:|---:|---:|\n";
  for (const std::string name : {"lora", "mole_learned", "mole_grouped"}) {
    md += "| " + name;
    for (const char* set : {"vqa", "mc", "text"}) {
      const json& i = results["stats"][name]["sets"][set]["overall"];
      md += " | " + fixed(i["mean"].get<double>()) +
            (i["lo"].is_number() ? " [" + fixed(i["lo"].get<double>()) + ", " + fixed(i["hi"].get<double>()) + "]" : "");
    }
    md += " |\n";
  }
  std::printf("\n%s\nreport: %s/report.html, %s/report.md; numbers: %s/results.json\n", md.c_str(), out.c_str(),
              out.c_str(), out.c_str());
  return 0;
}

}  // namespace mole
