// slow_checkpoint_train RUN.json DELAY_MS: `mole train --config RUN.json` whose every checkpoint write pauses for
// DELAY_MS after its files are written, before the folder is renamed into place, so that a test can kill the
// process inside a checkpoint write (tests/pipelines/test_training.cpp). The pause is a TrainHooks callback: the
// production trainer reads no test switch.
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include <torch/torch.h>

#include "core/json_config.h"
#include "pipelines/train_config.h"
#include "pipelines/trainer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: slow_checkpoint_train RUN.json DELAY_MS\n");
    return 2;
  }
  try {
    const std::string path = argv[1];
    const int delay_ms = std::stoi(argv[2]);
    mole::TrainHooks hooks;
    hooks.checkpoint_filled = [delay_ms](const std::string&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    };
    mole::run_training(mole::TrainConfig::from_json(mole::read_json_file(path), path), false, hooks);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "slow_checkpoint_train: %s\n", e.what());
    return 1;
  }
}
