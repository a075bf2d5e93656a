// mole: the command-line program. Each subcommand lives in pipelines/cmd_<name>.cpp.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include <c10/util/Exception.h>

#include "core/host_memory.h"
#include "dist/launch.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"compare", mole::cmd_compare, "train configs x seeds on the same data and report means, intervals, paired differences"},
    {"demo", mole::cmd_demo, "the whole pipeline on self-made data: pretrain, align, LoRA vs MoLE, eval, routes"},
    {"export", mole::cmd_export, "export a trained model for transformers / PEFT (llava-hf, PEFT adapter)"},
    {"generate", mole::cmd_generate, "answer a question about an image (or read questions from stdin)"},
    {"info", mole::cmd_info, "describe a llava-hf checkpoint folder and this build"},
    {"forward", mole::cmd_forward, "run a checkpoint on input tensors and write logits (parity checks)"},
    {"make-data", mole::cmd_make_data, "write the synthetic shapes dataset (images, instructions, eval files)"},
    {"train-tokenizer", mole::cmd_train_tokenizer, "train a LLaMA-style sentencepiece tokenizer folder"},
    {"check-data", mole::cmd_check_data, "run the data loader over a dataset and report what it finds"},
    {"eval-vqa", mole::cmd_eval_vqa, "answer a VQA question file (greedy, batched) and score it (VQAv2 metric)"},
    {"routes", mole::cmd_routes, "draw a MoLE model's routing per layer, expert and modality (PNG, JSON, HTML)"},
    {"score-vqa", mole::cmd_score_vqa, "score a results file with the official VQAv2 / GQA / ScienceQA / POPE metrics"},
    {"train", mole::cmd_train, "train: pretrain, align (projector) or finetune (LoRA / MoLE adapters)"},
};

// An error that ends the command: on stderr, with the rank when torchrun started this process; and into
// torchrun's error file, so that its failure summary shows the first failing rank's message.
int fail(const char* command, const std::string& message) {
  std::string where;
  try {
    where = mole::Launch::from_environment().where();
  } catch (const std::exception&) {  // a malformed launch variable is itself the error being reported
  }
  std::fprintf(stderr, "mole %s%s: error: %s\n", command, where.c_str(), message.c_str());
  if (const char* error_file = std::getenv("TORCHELASTIC_ERROR_FILE")) {
    std::ofstream out(error_file);
    out << nlohmann::json{{"message", "mole " + std::string(command) + where + ": " + message},
                          {"timestamp", int64_t(std::time(nullptr))}}.dump();
  }
  return 1;
}

void usage(FILE* out) {
  std::fprintf(out, "usage: mole <command> [options]   (mole <command> --help for its options)\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      mole::keep_freed_host_memory();
      mole::configure_threads();
      return c.run(argc, argv);
    } catch (const mole::UsageError& e) {
      std::fprintf(stderr, "%s\n", e.what());
      return 2;
    } catch (const c10::Error& e) {  // shape checks inside torch: the message without the C++ backtrace
      return fail(c.name, e.what_without_backtrace());
    } catch (const std::exception& e) {
      return fail(c.name, e.what());
    }
  }
  std::fprintf(stderr, "mole: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
