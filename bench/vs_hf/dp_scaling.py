"""Data-parallel scaling of `mole train` under torchrun on one machine: ranks x threads, same model and records.

    .venv/bin/python bench/vs_hf/dp_scaling.py --mole build/mole --out /tmp/vs_hf [--steps 12] [--warmup 3]
        [--shapes demo,medium] [--ranks 2] [--repeat R] [--workers 1]

For each shape (llava_checkpoint.py, the same checkpoints, data and tokenizer as vs_hf.py, made in the same OUT
folder) the MoLE FFN finetune of vs_hf.py (mole_e4k1: 4 experts top-1, attention LoRA r 16; --adapter lora
for plain LoRA) is trained four ways:
  1x1        one process, 1 thread, batch 8                       the unit
  1xN        one process, N threads, batch 8                      what one process makes of N cores
  Nx1 weak   torchrun --nproc_per_node N, 1 thread each, batch 8 per rank (a global batch of 8N)
  Nx1 strong torchrun, 1 thread each, batch 8/N per rank (the same global batch of 8 as 1x1)
tokens/s is over the measured steps (after the warm-up ones), from rank 0's metrics.jsonl windows (the tokens
of every rank: the trainer pools them). Prints a table per shape and ends with the line
    scaling_weak=X scaling_strong=Y
the Nx1 tokens/s over 1x1's, each the minimum over the shapes (target for N = 2: X >= 1.8).
With --repeat R every run is done R times and its fastest kept (a shared machine slows runs down, never up).
"""
import argparse
import json
import os
import shutil
import sys

import llava_checkpoint
import vs_hf

HERE = os.path.dirname(os.path.abspath(__file__))


def run_mole(args, out, shape, name, checkpoint, data, ranks, threads, batch):
    folder = f"{out}/runs/{shape}/dp_{name}"
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    adapter = vs_hf.LORA if args.adapter == "lora" else vs_hf.MOLE_FFN
    config = {"stage": "finetune", "out": folder,
              "model": {"base": checkpoint, "adapter": adapter, "train_projector": True},
              "data": {"train": [f"{data}/instruct.json"], "images": data, "template": "vicuna_v1",
                       "max_len": llava_checkpoint.SHAPES[shape]["max_len"], "batch_size": batch, "workers": args.workers},
              "optim": {"steps": args.warmup + args.steps, "lr": vs_hf.LR, "warmup_ratio": 0.03, "clip": 1.0,
                        "bf16": False},
              "run": {"seed": 0, "log_every": args.warmup, "threads": threads, "progress": "lines"}}
    config_file = f"{folder}_config.json"
    with open(config_file, "w") as f:
        json.dump(config, f, indent=1)
    cmd = [args.mole, "train", "--config", config_file]
    if ranks > 1:
        torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(ranks), "--no-python"] + cmd
    vs_hf.run(cmd, f"{out}/logs/{shape}_dp_{name}.log")
    with open(f"{folder}/metrics.jsonl") as f:
        windows = [w for w in map(json.loads, f) if "tokens_per_s" in w]
    assert windows[0]["step"] == args.warmup and windows[-1]["step"] == args.warmup + args.steps, "unexpected windows"
    tokens = sum(w["tokens"] for w in windows[1:])
    seconds = windows[-1]["seconds"] - windows[0]["seconds"]
    return {"ranks": ranks, "threads": threads, "batch_per_rank": batch, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_rss_mib_rank0": windows[-1]["peak_rss_mib"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mole", default="build/mole", help="the mole program")
    ap.add_argument("--out", required=True, help="working folder (shared with vs_hf.py: data, checkpoints)")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=3, help="steps before the measured ones (not timed)")
    ap.add_argument("--shapes", default="demo,medium", help="comma-separated: " + ",".join(llava_checkpoint.SHAPES))
    ap.add_argument("--ranks", type=int, default=os.cpu_count(), help="processes (and threads of 1xN)")
    ap.add_argument("--adapter", choices=["mole", "lora"], default="mole")
    ap.add_argument("--repeat", type=int, default=1, help="rounds; each run's fastest is kept")
    ap.add_argument("--workers", type=int, default=1, help="data.workers of every run (loader threads per rank)")
    ap.add_argument("--train-images", type=int, default=200, help="images of the shapes data")
    args = ap.parse_args()
    out, n = os.path.abspath(args.out), args.ranks
    os.makedirs(f"{out}/logs", exist_ok=True)
    tokenizer = vs_hf.make_tokenizer(args.mole, out, vs_hf.make_data(args.mole, out, 64, args.train_images))
    ways = [("1x1", 1, 1, 8), (f"1x{n}", 1, n, 8), (f"{n}x1_weak", n, 1, 8), (f"{n}x1_strong", n, 1, max(1, 8 // n))]
    results, weak, strong = {}, [], []
    for shape in args.shapes.split(","):
        data = vs_hf.make_data(args.mole, out, llava_checkpoint.image_size(shape), args.train_images)
        checkpoint = vs_hf.make_checkpoint(args.mole, out, shape, tokenizer)
        os.makedirs(f"{out}/runs/{shape}", exist_ok=True)
        best = {}
        for _ in range(args.repeat):
            for name, ranks, threads, batch in ways:
                r = run_mole(args, out, shape, name, checkpoint, data, ranks, threads, batch)
                if name not in best or r["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = r
        unit = best["1x1"]["tokens_per_s"]
        print(f"\n{shape} ({args.adapter}, {args.steps} measured steps, {os.cpu_count()} cores)")
        print(f"  {'run':<12} {'ranks':>5} {'threads':>7} {'batch/rank':>10} {'tokens/s':>9} {'vs 1x1':>7}")
        for name, *_ in ways:
            r = best[name]
            print(f"  {name:<12} {r['ranks']:>5} {r['threads']:>7} {r['batch_per_rank']:>10} "
                  f"{r['tokens_per_s']:>9.0f} {r['tokens_per_s'] / unit:>6.2f}x")
        weak.append(best[f"{n}x1_weak"]["tokens_per_s"] / unit)
        strong.append(best[f"{n}x1_strong"]["tokens_per_s"] / unit)
        results[shape] = best
    with open(f"{out}/dp_scaling.json", "w") as f:
        json.dump(results, f, indent=1)
    print(f"scaling_weak={min(weak):.3f} scaling_strong={min(strong):.3f}")


if __name__ == "__main__":
    main()
