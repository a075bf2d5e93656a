// mole check-data --data FILE --images DIR --tokenizer MODEL_DIR_OR_FILE [--template T] [--max-len N]
// Runs the training data loader over a whole dataset, without a model, and reports what a training run would
// find: records, images, tokens, truncation, and every skipped record by reason. Users run it before a long job.
// Exit status: 0 when the file can be trained on (bad records are reported, not fatal), 1 when the file itself
// is unusable (missing, not LLaVA-shaped, no usable record) or, with --strict, on the first bad record.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "core/limits.h"
#include "core/json_config.h"
#include "data/data_check.h"
#include "model/llava_loader.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_check_data(int argc, char** argv) {
  Args args("check-data",
            "Run the data loader over a whole LLaVA dataset without training and report records, images, token "
            "counts, truncation and skipped records by reason.");
  args.option("data", "LLaVA conversation file (.json list or .jsonl)", "", true)
      .option("images", "folder the records' image paths are relative to", "", true)
      .option("tokenizer", "tokenizer folder (tokenizer.model + added tokens) or tokenizer.model file", "", true)
      .option("template", "conversation template: vicuna_v1, llava_llama_2, plain", "vicuna_v1")
      .integer("max-len", "sequence limit after image expansion (0: none)", 2048, 0, kMaxSequence)
      .option("model", "llava checkpoint folder: image tokens from its config.json, preprocessing from its "
                       "preprocessor_config.json", "")
      .integer("image-tokens", "ids per image when no --model is given (LLaVA-1.5: 576)", 576, 1, kMaxImageTokens)
      .option("preprocessor", "preprocessor_config.json (default: the model's, else LLaVA-1.5's values)", "")
      .integer("workers", "loader threads", 2, 0, kMaxWorkers)
      .flag("strict", "stop with an error at the first bad record")
      .flag("json", "print the report as one JSON object");
  if (!args.parse(argc, argv)) return 0;

  LoaderOptions options;
  options.batch_size = 16;
  options.n_workers = args.get_int("workers");
  options.conversation_template = parse_template(args.get("template"));
  options.max_len = args.get_int("max-len");
  options.n_image_tokens = args.get_int("image-tokens");
  options.image_dir = args.get("images");
  options.strict = args.has("strict");

  std::string preprocessor = args.get("preprocessor");
  if (args.has("model")) {
    if (args.given("image-tokens"))
      throw UsageError("mole check-data: --image-tokens and --model are both given; the image tokens come from "
                       "--model's config.json (drop --image-tokens, or --model to set them by hand)");
    const std::string dir = args.get("model");
    options.n_image_tokens = read_llava_config(dir).n_image_features();
    if (preprocessor.empty() && std::filesystem::exists(dir + "/preprocessor_config.json"))
      preprocessor = dir + "/preprocessor_config.json";
  }
  auto images = std::make_shared<const ImageProcessor>(
      preprocessor.empty() ? ImageProcessorConfig{} : ImageProcessorConfig::from_file(preprocessor));
  auto tokenizer = std::make_shared<const Tokenizer>(Tokenizer::load(args.get("tokenizer")));

  auto dataset = std::make_shared<const LlavaDataset>(read_llava_dataset(args.get("data"), options.strict));
  const DataCheck check = check_dataset(dataset, tokenizer, images, options);
  const SkipReport& skipped = check.skipped;
  json report = {{"data", args.get("data")},
                 {"template", template_name(options.conversation_template)},
                 {"max_len", options.max_len},
                 {"image_tokens", options.n_image_tokens}};
  report.update(check.to_json());
  if (args.has("json")) {
    std::printf("%s\n", report.dump(1).c_str());
    return 0;
  }
  std::printf("%s: %lld records, %lld usable samples, %lld images (template %s, max-len %lld, %lld ids per image)\n",
              args.get("data").c_str(), (long long)check.records, (long long)check.usable_samples,
              (long long)check.images,
              template_name(options.conversation_template).c_str(), (long long)options.max_len,
              (long long)options.n_image_tokens);
  std::printf("tokens per sample: mean %.1f, max %lld (record %s); supervised per sample: mean %.1f\n",
              report["tokens_mean"].get<double>(), (long long)check.tokens_max, check.longest_record.c_str(),
              report["supervised_tokens_mean"].get<double>());
  std::printf("truncated to max-len: %lld\n", (long long)check.truncated);
  std::printf("skipped: %lld\n%s", (long long)skipped.total(), skipped.to_text().c_str());
  std::printf("checked in %.1f s\n", check.seconds);
  return 0;
}

}  // namespace mole
