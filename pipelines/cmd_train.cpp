// mole train --config run.json [--set key=value ...] [--device cuda[:N]] [--resume [--allow-config-change] | --overwrite]
// The training stages (pipelines/trainer.h): the config file follows the field lists of pipelines/train_config.h;
// --set changes fields of it for this run, e.g. --set optim.lr=1e-3 --set model.adapter.n_experts=4.
#include <cstdio>
#include <string>

#include "core/json_config.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"
#include "pipelines/train_config.h"
#include "pipelines/trainer.h"

namespace mole {

int cmd_train(int argc, char** argv) {
  Args args("train",
            "Train: pretrain (all parameters, from scratch or a base), align (the projector, LLaVA stage 1) or "
            "finetune (LoRA / MoLE adapters, LLaVA stage 2). Writes OUT/run.json, OUT/metrics.jsonl, "
            "OUT/checkpoints/ and OUT/final/. Ctrl-C writes a checkpoint and stops.");
  args.option("config", "run config JSON (see README: Training)", "", true)
      .repeated("set", "KEY=VALUE override of a config field, dotted (optim.lr=1e-3); repeatable")
      .option("device", "cpu, cuda or cuda:N: run.device for this run (under torchrun, cuda is each local rank's own)", "")
      .flag("resume", "continue from OUT/checkpoints/latest, exactly where it stopped")
      .flag("overwrite", "start over in an OUT that holds a run (its run.json, metrics.jsonl, checkpoints/ and "
                         "final/ are removed)")
      .flag("allow-config-change", "--resume with a config that differs from OUT/run.json in what decides the run "
                                   "(steps, data, batch, seed, model, ...); the result is then not the straight run's")
      .flag("print-config", "print the resolved config (every field, defaults included) and exit")
      .epilog("Fields of run.json (dotted keys for --set; type = default):\n" + train_config_help());
  if (!args.parse(argc, argv)) return 0;
  json j = read_json_file(args.get("config"));
  for (const std::string& assignment : args.get_all("set")) apply_override(j, assignment);
  if (!args.get("device").empty()) apply_override(j, "run.device=" + args.get("device"));
  TrainConfig config = TrainConfig::from_json(j, args.get("config"));
  if (args.has("print-config")) {
    std::printf("%s\n", config.to_json().dump(2).c_str());
    return 0;
  }
  if (args.has("overwrite") && args.has("resume")) throw ConfigError("train: --overwrite and --resume exclude each other");
  RunFolderRules rules;
  rules.overwrite = args.has("overwrite");
  rules.allow_config_change = args.has("allow-config-change");
  TrainResult result = run_training(config, args.has("resume"), {}, rules);
  return result.interrupted ? 130 : 0;
}

}  // namespace mole
