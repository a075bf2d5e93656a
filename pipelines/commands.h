// The subcommands of the `mole` program; each returns the process exit code.
#pragma once

namespace mole {

// Sets LibTorch's intra-op threads: MOLE_THREADS when set, else every core of the machine.
int configure_threads();

int cmd_info(int argc, char** argv);     // mole info DIR
int cmd_forward(int argc, char** argv);  // mole forward --model DIR --inputs IN --out OUT
int cmd_make_data(int argc, char** argv);  // mole make-data shapes --out DIR
int cmd_train_tokenizer(int argc, char** argv);  // mole train-tokenizer --corpus FILE --vocab-size N --out DIR
int cmd_check_data(int argc, char** argv);  // mole check-data --data FILE --images DIR --tokenizer DIR
int cmd_train(int argc, char** argv);  // mole train --config run.json [--set k=v] [--resume]
int cmd_score_vqa(int argc, char** argv);  // mole score-vqa --results R --annotations A
int cmd_demo(int argc, char** argv);  // mole demo [--out DIR] [--quick]
int cmd_export(int argc, char** argv);  // mole export --model RUN --out DIR [--merge]
int cmd_generate(int argc, char** argv);  // mole generate --model M --image IMG --prompt "..."
int cmd_routes(int argc, char** argv);  // mole routes --model M --data FILE --images DIR --out DIR
int cmd_eval_vqa(int argc, char** argv);  // mole eval-vqa --model M --questions Q --images DIR --out DIR
int cmd_compare(int argc, char** argv);  // mole compare --config compare.json

}  // namespace mole
