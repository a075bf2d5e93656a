// mole export RUN --out DIR [--merge]
// Takes a trained model out in the forms transformers and PEFT run (model/llava_export.h): a llava-hf folder, a
// PEFT adapter folder for plain LoRA, or for MoLE the llava-hf base with the trained projector plus mole_adapter/.
#include <cstdio>
#include <string>

#include "model/llava_export.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_export(int argc, char** argv) {
  Args args("export",
            "Export a trained model: a llava-hf folder (LlavaProcessor + LlavaForConditionalGeneration load it), or for "
            "plain LoRA without --merge a PEFT adapter folder (the projector in modules_to_save), or for MoLE the "
            "llava-hf base with the trained projector plus mole_adapter/ (run with mole generate --adapter).");
  args.option("model", "a mole run, checkpoint or final folder", "", true)
      .option("out", "the folder to write (must not exist)", "", true)
      .flag("merge", "plain LoRA: fold the adapter into the weights (a llava-hf folder)");
  if (!args.parse(argc, argv)) return 0;
  const ExportResult r = export_model(args.get("model"), args.get("out"), args.has("merge"));
  std::printf("exported %s as %s to %s\n", args.get("model").c_str(), r.form.c_str(), r.out.c_str());
  return 0;
}

}  // namespace mole
