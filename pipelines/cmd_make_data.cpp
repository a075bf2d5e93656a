// mole make-data shapes --out DIR [--train N] [--eval N] [--size PX] [--seed S]
// Writes the synthetic multimodal instruction dataset that the demo trains on (data/shapes.h).
#include <cstdio>
#include <string>

#include "core/limits.h"
#include "data/shapes.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"

namespace mole {

int cmd_make_data(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) != "shapes") {
    if (argc >= 3 && (std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h")) {
      std::printf("usage: mole make-data shapes --out DIR [options]   (the one generator so far)\n");
      return 0;
    }
    throw UsageError("mole make-data: which dataset? (shapes)");
  }
  ShapesOptions defaults;
  Args args("make-data shapes",
            "Draw the synthetic shapes dataset: images, captions, instructions of conflicting answer styles, "
            "text-only tasks, VQAv2-format evaluation files and a text corpus. Same seed, same bytes.");
  args.option("out", "output folder", "", true)
      .integer("train", "training images", defaults.n_train, 0, kMaxShapesImages)
      .integer("eval", "held-out images", defaults.n_eval, 0, kMaxShapesImages)
      .integer("text-train", "text-only training records", defaults.n_text_train, 0, kMaxShapesImages)
      .integer("text-eval", "text-only held-out questions", defaults.n_text_eval, 0, kMaxShapesImages)
      .integer("size", "image side in pixels", defaults.size, 16, 4096)
      .integer("seed", "random seed", 0, 0, std::numeric_limits<int64_t>::max());
  if (!args.parse(argc, argv, 3)) return 0;
  ShapesOptions o;
  o.out_dir = args.get("out");
  o.n_train = args.get_int("train");
  o.n_eval = args.get_int("eval");
  o.n_text_train = args.get_int("text-train");
  o.n_text_eval = args.get_int("text-eval");
  o.size = args.get_int("size");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  auto info = make_shapes_dataset(o);
  std::printf("mole make-data shapes: %s\n%s\n", o.out_dir.c_str(), info.dump(1).c_str());
  return 0;
}

}  // namespace mole
