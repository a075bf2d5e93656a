// mole routes --model RUN_OR_CHECKPOINT --data FILE --images DIR --out DIR [--generate]
// Runs a MoLE model on samples and draws what its routers do (report/route_report.h): per layer x expert load
// of image and text tokens (heat maps, stacked bars; top-1 and top-k), router entropy per layer and modality,
// image patches coloured by their top expert, expert load over training from the run's metrics log; PNGs,
// routes.json and index.html.
#include <cstdio>

#include "core/limits.h"
#include "eval/routes.h"
#include "eval/answer.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_routes(int argc, char** argv) {
  Args args("routes", "Draw the routing of a MoLE model per layer, expert and modality (PNG + JSON + HTML).");
  args.option("model", "a mole run, checkpoint or final folder with MoLE adapters", "", true)
      .option("adapter", "an adapter folder (mole's, or a PEFT LoRA one) to put on the model first", "")
      .option("template", "conversation template instead of the model's (e.g. the one an --adapter was trained "
                          "with: vicuna_v1, llava_llama_2, plain, mistral_instruct, chatml, llama3)", "")
      .option("data", "LLaVA question .jsonl or LLaVA conversation file", "", true)
      .option("images", "folder the images are in", "")
      .option("out", "output folder", "", true)
      .integer("samples", "samples run through the model", 64, 1, kMaxCount)
      .integer("patch-images", "images drawn with the top expert of each patch", 4, 0, 64)
      .integer("layer", "routed layer (index in routing order) for the patch pictures; -1: the middle one", -1,
               -1, kMaxLayers)
      .option("metrics", "training metrics log for load over training (default: the run's metrics.jsonl)", "")
      .option("device", "cpu or cuda", "cpu")
      .flag("generate", "also route the generated answers (phase generate) and show both phases");
  if (!args.parse(argc, argv)) return 0;
  TrainedModel model = load_trained(args.get("model"), torch::Device(args.get("device")));
  if (args.has("adapter")) put_adapter(model, args.get("adapter"));
  if (args.has("template")) model.conversation_template = parse_template(args.get("template"));
  RouteOptions options;
  options.max_samples = args.get_int("samples");
  options.n_patch_images = args.get_int("patch-images");
  options.layer = args.get_int("layer");
  options.generate = args.has("generate");
  options.image_dir = args.get("images");
  RouteCollection routes = collect_routes(model, route_questions(args.get("data")), options);
  if (routes.stats.layers.empty())
    throw std::runtime_error(args.get("model") + ": no routed layer (the model has no MoLE adapters)");
  RouteReportOptions report;
  report.title = "Expert routing: " + args.get("model");
  report.phase = options.generate ? "apart" : "prefill";  // prompts and answers drawn apart
  report.metrics_log = args.has("metrics") ? args.get("metrics") : metrics_log_for(args.get("model"));
  report.patch_grids = routes.patch_grids;
  RouteReport written = write_route_report(args.get("out"), routes.stats, report);
  std::printf("%lld samples, %zu routed layers -> %s (%zu figures)\n", (long long)routes.n_samples,
              routes.stats.layers.size(), written.html.c_str(), written.pngs.size());
  return 0;
}

}  // namespace mole
