// mole generate --model RUN_OR_CHECKPOINT [--image IMG] [--prompt "..."]
// Answers one question about an image (or a text-only question) with greedy decoding in the model's template;
// without --prompt, reads questions from stdin, one per line, and answers each as it comes.
#include <cstdio>
#include <iostream>
#include <string>

#include "eval/answer.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_generate(int argc, char** argv) {
  Args args("generate", "Answer a question about an image with a trained model (greedy decoding, KV cache).");
  args.option("model", "a mole run, checkpoint or final folder, or a llava-hf folder", "", true)
      .option("image", "image file; none: a text-only question", "")
      .option("prompt", "the question; none: read questions from stdin, one per line", "")
      .option("max-new-tokens", "longest answer in tokens", "128")
      .option("device", "cpu or cuda", "cpu");
  if (!args.parse(argc, argv)) return 0;
  TrainedModel model = load_trained(args.get("model"), torch::Device(args.get("device")));
  AnswerOptions options;
  options.batch_size = 1;
  options.max_new_tokens = args.get_int("max-new-tokens");
  auto answer = [&](const std::string& text) {
    VqaQuestion q;
    q.text = text;
    q.image = args.get("image");
    std::printf("%s\n", answer_questions(model, {q}, options).front().text.c_str());
    std::fflush(stdout);
  };
  if (args.has("prompt")) {
    answer(args.get("prompt"));
    return 0;
  }
  for (std::string line; std::getline(std::cin, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) answer(line);
  return 0;
}

}  // namespace mole
