// mole generate --model RUN_OR_CHECKPOINT [--adapter DIR] [--image IMG] [--prompt "..."] [--print-ids]
// Answers one question about an image (or a text-only question) with greedy decoding in the model's template;
// without --prompt, reads questions from stdin, one per line, and answers each as it comes.
#include <cstdio>
#include <iostream>
#include <string>

#include "core/limits.h"
#include "eval/answer.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_generate(int argc, char** argv) {
  Args args("generate", "Answer a question about an image with a trained model (greedy decoding, KV cache).");
  args.option("model", "a mole run, checkpoint or final folder, or a llava-hf folder", "", true)
      .option("image", "image file; none: a text-only question", "")
      .option("prompt", "the question; none: read questions from stdin, one per line", "")
      .integer("max-new-tokens", "longest answer in tokens", 128, 1, kMaxSequence)
      .option("device", "cpu or cuda", "cpu")
      .option("adapter", "an adapter folder (mole's, or a PEFT LoRA one) to put on the model first", "")
      .option("template", "conversation template instead of the model's (e.g. the one an --adapter was trained "
                          "with: vicuna_v1, llava_llama_2, plain, mistral_instruct, chatml, llama3)", "")
      .flag("print-ids", "print the generated token ids on a second line");
  if (!args.parse(argc, argv)) return 0;
  TrainedModel model = load_trained(args.get("model"), torch::Device(args.get("device")));
  if (args.has("adapter")) put_adapter(model, args.get("adapter"));
  if (args.has("template")) model.conversation_template = parse_template(args.get("template"));
  AnswerOptions options;
  options.batch_size = 1;
  options.max_new_tokens = args.get_int("max-new-tokens");
  auto answer = [&](const std::string& text) {
    VqaQuestion q;
    q.text = text;
    q.image = args.get("image");
    const ModelAnswer a = answer_questions(model, {q}, options).front();
    std::printf("%s\n", a.text.c_str());
    if (args.has("print-ids")) {
      for (size_t i = 0; i < a.ids.size(); ++i) std::printf("%s%lld", i ? " " : "ids: ", (long long)a.ids[i]);
      std::printf("%s\n", a.ids.empty() ? "ids:" : "");
    }
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
