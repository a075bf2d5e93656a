"""Training speed of mole against Hugging Face transformers + PEFT (and MixLoRA) on the same LLaVA finetune.

    .venv/bin/python bench/vs_hf/vs_hf.py --mole build/mole --out /tmp/vs_hf [--steps 12] [--warmup 3]
        [--threads T] [--shapes demo,medium] [--repeat R]

What is measured. For each model shape (llava_checkpoint.py: "demo" is `mole demo`'s 1.4 M-parameter LLaVA,
"medium" a 30 M one), one random-initialised checkpoint written by transformers is finetuned LLaVA-1.5 style
(stage 2: adapter + projector trained, vision tower and language model frozen, vicuna_v1 template, batch 8,
float32, AdamW lr 2e-4, clipping at 1.0, one data worker, T compute threads) by:
  hf_lora           transformers + PEFT LoRA r 16 / alpha 32 / dropout 0.05 on q,k,v,o,gate,up,down (hf_train.py)
  mole_lora         `mole train` with the same LoRA, as a user runs it: its defaults, so data.packing (a batch's
                    samples laid end to end in rows of up to max_len; the decoder computes no padding)
  mole_e4k1         mole MoLE at FFN level, 4 experts top-1 (learned routing, switch_aux 0.01), attention LoRA r 16
  mole_e8k2         the same with 8 experts top-2
  mole_lora_padded  mole_lora with packing off: padded batches, as HF computes them
  mixlora           MixLoRA (pip mixlora) in transformers: 4 experts top-1 on the FFN, LoRA r 16 on attention
Both programs train on the same samples in the same order (hf_train.py replays mole's loader order and
tokenizes as LLaVA's preprocess_v1, which gives mole's ids): the per-window token counts of mole's
metrics.jsonl are checked against hf_train's, and the trainable parameter counts are printed side by side.

How. Each run does warm-up steps and then the measured steps. Speed is over the measured steps only: wall time
from the end of the last warm-up step to the end of the last step (data loading, forward, backward, clipping
and the optimizer step included; start-up, checkpoints and files excluded). tokens/s counts non-padding tokens
(attention_mask sum; each <image> counts its image tokens), as mole's metrics do (StepStats.tokens = the
batch's sample lengths). mole's times are the "seconds" field of metrics.jsonl at the window ends, with
run.log_every = the warm-up steps, so the first window is the warm-up. With --repeat R every run is done R
times, in rounds, and its fastest is kept: on a machine shared with other work (two OpenMP threads on two
cores slow down many times when a third process takes a core) that is the closest to its speed alone.
Prints a table per shape, writes OUT/results.json, and ends with the line
    ratio_lora_vs_hf=X ratio_mole_vs_hf=Y
X = mole_lora / hf_lora tokens/s and Y = mole_e4k1 / hf_lora tokens/s, each the minimum over the shapes.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import llava_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, LR = 8, 2e-4
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = {"kind": "lora", "rank": 16, "alpha": 32, "dropout": 0.05, "targets": TARGETS, "parts": ["language"]}
# as `mole demo`'s mole_learned (pipelines/cmd_demo.cpp adapters()), with this benchmark's dropout
MOLE_FFN = dict(LORA, kind="mole", granularity="ffn", routing_mode="learned", lora_elsewhere=True,
                losses={"switch_aux": 0.01})
# name -> (adapter, data.packing): mole's default (packed) but for the padded reference row
MOLE_RUNS = {"mole_lora": (LORA, True),
             "mole_e4k1": (dict(MOLE_FFN, n_experts=4, top_k=1), True),
             "mole_e8k2": (dict(MOLE_FFN, n_experts=8, top_k=2), True),
             "mole_lora_padded": (LORA, False)}
LABELS = {"hf_lora": "HF transformers + PEFT LoRA", "mole_lora": "mole LoRA",
          "mole_e4k1": "mole MoLE ffn, 4 experts top-1", "mole_e8k2": "mole MoLE ffn, 8 experts top-2",
          "mole_lora_padded": "mole LoRA, padded batches (packing off)",
          "mixlora": "MixLoRA (transformers), 4 experts top-1"}
# LLaVA conversation.py conv_vicuna_v1.system; the demo adds it to the tokenizer corpus so it costs few tokens
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


def run(cmd, log):
    """Runs cmd with its output in the log file; raises with the log's tail when it fails."""
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(log) as f:
            tail = f.read().strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {done.returncode}, {log}): {tail[0]}")


# ---- inputs: data, tokenizer, checkpoints -----------------------------------------------------------------------

def make_data(mole, out, size, n_images):
    """mole make-data shapes at one image size (the records are the same text at every size)."""
    data = f"{out}/data_{size}px"
    if not os.path.exists(f"{data}/instruct.json"):
        run([mole, "make-data", "shapes", "--out", data, "--train", str(n_images), "--eval", "10",
             "--text-train", str(n_images // 2), "--text-eval", "10", "--size", str(size)],
            f"{out}/logs/make_data_{size}.log")
    return data


def make_tokenizer(mole, out, data):
    """As `mole demo`: a 768-piece tokenizer on the corpus plus eight lines of the template's fixed text."""
    tokenizer = f"{out}/tokenizer"
    if not os.path.exists(f"{tokenizer}/tokenizer.model"):
        with open(f"{data}/corpus.txt") as f, open(f"{out}/tokenizer_corpus.txt", "w") as corpus:
            corpus.write(f.read())
            corpus.write(f"{VICUNA_SYSTEM} USER: What is it? ASSISTANT: A star.\n" * 8)
        run([mole, "train-tokenizer", "--corpus", f"{out}/tokenizer_corpus.txt", "--vocab-size", "768", "--out",
             tokenizer], f"{out}/logs/train_tokenizer.log")
    return tokenizer


def make_checkpoint(mole, out, shape, tokenizer):
    checkpoint = f"{out}/checkpoint_{shape}"
    n = llava_checkpoint.make_checkpoint(shape, tokenizer, checkpoint)
    run([mole, "info", checkpoint], f"{out}/logs/info_{shape}.log")  # mole accepts it: every name and shape checked
    print(f"{shape}: {checkpoint}, {n:,} parameters (mole info accepts it)", flush=True)
    return checkpoint


def mixlora_python(venv):
    """A venv of its own for MixLoRA: `pip install --no-deps mixlora`, the project venv's packages reached through
    a .pth file. Returns (its python, "") or ("", why not)."""
    python = f"{venv}/bin/python"
    try:
        if not os.path.exists(python):
            subprocess.run([os.path.realpath(sys.executable), "-m", "venv", venv], check=True, capture_output=True)
            site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip()
            with open(f"{site}/project_venv.pth", "w") as f:
                f.write(sysconfig.get_paths()["purelib"] + "\n")
        check = subprocess.run([python, "-c", "import mixlora"], capture_output=True, text=True)
        if check.returncode != 0:
            install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "mixlora"],
                                     capture_output=True, text=True)
            if install.returncode != 0:
                return "", "pip install --no-deps mixlora: " + (install.stderr.strip().splitlines() or ["failed"])[-1]
            check = subprocess.run([python, "-c", "import mixlora"], capture_output=True, text=True)
            if check.returncode != 0:
                return "", "import mixlora: " + check.stderr.strip().splitlines()[-1]
    except (OSError, subprocess.CalledProcessError) as e:
        return "", f"making {venv}: {e}"
    return python, ""


# ---- the runs ---------------------------------------------------------------------------------------------------

def speed(tokens, samples, seconds, n_steps, data_wait):
    return {"tokens_per_s": tokens / seconds, "samples_per_s": samples / seconds, "s_per_step": seconds / n_steps,
            "measured_tokens": tokens, "measured_seconds": seconds, "measured_data_wait_s": data_wait}


def run_hf(python, name, args, out, shape, checkpoint, tokenizer, data, adapter):
    result = f"{out}/runs/{shape}/{name}.json"
    run([python, f"{HERE}/hf_train.py", "--adapter", adapter, "--model", checkpoint, "--tokenizer", tokenizer,
         "--data", f"{data}/instruct.json", "--images", data,
         "--max-len", str(llava_checkpoint.SHAPES[shape]["max_len"]),
         "--steps", str(args.warmup + args.steps), "--threads", str(args.threads), "--batch-size", str(BATCH),
         "--lr", str(LR), "--out", result], f"{out}/logs/{shape}_{name}.log")
    with open(result) as f:
        r = json.load(f)
    steps, w = r["steps"], args.warmup
    measured = steps[w:]
    r["warmup_loss"] = sum(s["loss"] for s in steps[:w]) / w
    r.update(speed(sum(s["tokens"] for s in measured), sum(s["samples"] for s in measured),
                   steps[-1]["end_s"] - steps[w - 1]["end_s"], len(measured), sum(s["data_wait_s"] for s in measured)))
    return r


def run_mole(mole, name, args, out, shape, checkpoint, data, reference_steps):
    """`mole train` on the same data; reference_steps (hf_lora's per-step tokens and samples) check the samples."""
    folder = f"{out}/runs/{shape}/{name}"
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    adapter, packing = MOLE_RUNS[name]
    config = {"stage": "finetune", "out": folder,
              "model": {"base": checkpoint, "adapter": adapter, "train_projector": True},
              "data": {"train": [f"{data}/instruct.json"], "images": data, "template": "vicuna_v1",
                       "max_len": llava_checkpoint.SHAPES[shape]["max_len"], "batch_size": BATCH, "workers": 1,
                       "group_by_length": False, "packing": packing},
              "optim": {"steps": args.warmup + args.steps, "lr": LR, "weight_decay": 0.0, "warmup_ratio": 0.03,
                        "clip": 1.0, "bf16": False},
              "run": {"seed": 0, "log_every": args.warmup, "save_every": 0, "threads": args.threads,
                      "progress": "lines"}}
    config_file = f"{folder}_config.json"
    with open(config_file, "w") as f:
        json.dump(config, f, indent=1)
    log = f"{out}/logs/{shape}_{name}.log"
    run([mole, "train", "--config", config_file], log)
    with open(log) as f:  # "mole train finetune: N parameters trainable of M (..%)"
        trainable = next(int(line.split(": ")[1].split()[0]) for line in f if " parameters trainable of " in line)
    with open(f"{folder}/metrics.jsonl") as f:
        windows = [w for w in map(json.loads, f) if "tokens_per_s" in w]
    # Each window's tokens: tokens_per_s / samples_per_s is its tokens per sample (one clock divides both), times
    # its samples, which are hf_lora's for the same steps when the samples are the same (a check on both).
    tokens = samples = 0
    same_samples = True
    for before, window in zip(windows, windows[1:]):
        steps = reference_steps[before["step"]:window["step"]]
        window_samples = sum(s["samples"] for s in steps)
        window_tokens = round(window["tokens_per_s"] / window["samples_per_s"] * window_samples)
        same_samples &= window_tokens == sum(s["tokens"] for s in steps) and window["skipped_records"] == 0
        tokens, samples = tokens + window_tokens, samples + window_samples
    assert windows[0]["step"] == args.warmup and windows[-1]["step"] == args.warmup + args.steps, "unexpected windows"
    r = {"trainable_params": trainable, "same_samples_as_hf": same_samples,
         "warmup_loss": windows[0]["lm_loss"]}
    r.update(speed(tokens, samples, windows[-1]["seconds"] - windows[0]["seconds"], args.steps,
                   sum(w["data_wait_s"] for w in windows[1:])))
    return r


def bench_shape(args, out, shape, tokenizer, mixlora):
    """Every run of one shape, args.repeat rounds of all of them; each run's fastest round is kept."""
    size = llava_checkpoint.image_size(shape)
    data = make_data(args.mole, out, size, args.train_images)
    checkpoint = make_checkpoint(args.mole, out, shape, tokenizer)
    os.makedirs(f"{out}/runs/{shape}", exist_ok=True)

    def hf(python, name, adapter):
        return lambda: run_hf(python, name, args, out, shape, checkpoint, tokenizer, data, adapter)

    def mole(name):  # checked against the hf_lora run done before it in the round
        return lambda: run_mole(args.mole, name, args, out, shape, checkpoint, data, rows["hf_lora"]["steps"])

    runs = {"hf_lora": hf(sys.executable, "hf_lora", "lora")}
    runs.update({name: mole(name) for name in MOLE_RUNS})
    mixlora_python, why_not = mixlora
    if mixlora_python:
        runs["mixlora"] = hf(mixlora_python, "mixlora", "mixlora")
    rows, rounds = {}, {name: [] for name in runs}
    for round_ in range(args.repeat):
        for name, go in list(runs.items()):
            rounds_text = f" (round {round_ + 1} of {args.repeat})" if args.repeat > 1 else ""
            print(f"{shape}: {name}{rounds_text}", flush=True)
            try:
                r = go()
            except RuntimeError as e:
                if name != "mixlora":
                    raise
                why_not = str(e)
                del runs[name]
                continue
            rounds[name].append(r["tokens_per_s"])
            if name not in rows or r["tokens_per_s"] > rows[name]["tokens_per_s"]:
                rows[name] = r
            if not r.get("same_samples_as_hf", True):
                print(f"{shape}: {name}: WARNING: its window token counts differ from hf_lora's: not the same samples")
    if why_not:
        print(f"{shape}: mixlora: n/a: {why_not}")
        rows["mixlora"] = {"n/a": why_not}
    for name, r in rows.items():
        r.pop("steps", None)
        r["rounds_tokens_per_s"] = rounds.get(name, [])
    return rows


def print_table(shape, rows):
    hf = rows["hf_lora"]["tokens_per_s"]
    print(f"\n{shape} (batch {BATCH}, max_len {llava_checkpoint.SHAPES[shape]['max_len']})\n")
    print("| run | tokens/s | samples/s | s/step | x HF LoRA | trainable |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        if "n/a" in r:
            print(f"| {LABELS[name]} | n/a | n/a | n/a | n/a | n/a |")
            continue
        print(f"| {LABELS[name]} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.2f} | {r['s_per_step']:.3f} | "
              f"{r['tokens_per_s'] / hf:.3f} | {r['trainable_params']:,} |")
    lora_match = rows["hf_lora"]["trainable_params"] == rows["mole_lora"]["trainable_params"]
    print(f"\ntrainable parameters, LoRA: HF + PEFT {rows['hf_lora']['trainable_params']:,}, mole "
          f"{rows['mole_lora']['trainable_params']:,} ({'equal' if lora_match else 'DIFFERENT'})")
    print(f"loss over the warm-up steps: HF LoRA {rows['hf_lora']['warmup_loss']:.4f}, mole LoRA "
          f"{rows['mole_lora']['warmup_loss']:.4f}")
    return lora_match


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mole", default="build/mole", help="the mole program")
    ap.add_argument("--out", required=True, help="working folder: data, checkpoints, runs, logs, results.json")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the measured ones (not timed)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="compute threads (default: every core)")
    ap.add_argument("--shapes", default="demo,medium", help="comma-separated: " + ",".join(llava_checkpoint.SHAPES))
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of every run, the fastest kept (a shared machine's other load only slows a run)")
    ap.add_argument("--train-images", type=int, default=200, help="images of the shapes data (about 2 records each)")
    ap.add_argument("--mixlora-venv", default="/tmp/mixlora-venv", help="the separate venv MixLoRA is installed in")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    for shape in shapes:
        if shape not in llava_checkpoint.SHAPES:
            ap.error(f"--shapes: unknown shape '{shape}' (known: {', '.join(llava_checkpoint.SHAPES)})")
    if min(args.steps, args.warmup, args.repeat) < 1:
        ap.error("--steps, --warmup and --repeat must be at least 1")
    args.mole = os.path.abspath(args.mole)
    out = os.path.abspath(args.out)
    os.makedirs(f"{out}/logs", exist_ok=True)

    # one tokenizer for every shape (the shapes data has the same text at every image size)
    tokenizer = make_tokenizer(args.mole, out, make_data(args.mole, out, 64, args.train_images))
    mixlora = mixlora_python(args.mixlora_venv)
    print(f"{args.threads} threads, {args.warmup} warm-up + {args.steps} measured steps per run", flush=True)
    results = {"threads": args.threads, "warmup_steps": args.warmup, "measured_steps": args.steps, "batch": BATCH,
               "repeat": args.repeat, "shapes": {}}
    for shape in shapes:
        results["shapes"][shape] = {"runs": bench_shape(args, out, shape, tokenizer, mixlora)}
    for shape, result in results["shapes"].items():
        rows = result["runs"]
        result["lora_trainable_params_equal"] = print_table(shape, rows)
        hf = rows["hf_lora"]["tokens_per_s"]
        result["ratio_lora_vs_hf"] = rows["mole_lora"]["tokens_per_s"] / hf
        result["ratio_mole_vs_hf"] = rows["mole_e4k1"]["tokens_per_s"] / hf
    for key in ("ratio_lora_vs_hf", "ratio_mole_vs_hf"):  # the worse shape
        results[key] = min(result[key] for result in results["shapes"].values())
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults: {out}/results.json, logs: {out}/logs")
    print(f"ratio_lora_vs_hf={results['ratio_lora_vs_hf']:.3f} ratio_mole_vs_hf={results['ratio_mole_vs_hf']:.3f}")


if __name__ == "__main__":
    main()
