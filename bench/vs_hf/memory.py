"""Memory of `mole train`: activation checkpointing and a bfloat16 frozen base, peak RSS and step time.

    .venv/bin/python bench/vs_hf/memory.py --mole build/mole --out /tmp/vs_hf [--parts wide,7b] [--steps 3]

wide: the "wide" shape of llava_checkpoint.py (a LLaMA of 8 layers of width 1024 behind a small ViT), LoRA
  finetune (vs_hf.py's LoRA: r 16 on every linear layer, dropout 0.05, the projector training), batch 4 of
  samples of exactly 1024 tokens (multi-turn LLaVA records longer than that, cut at max_len), four ways:
  float32 base without and with optim.activation_checkpointing=decoder, then model.dtype=bfloat16 (bf16
  autocast) without and with it.
7b: LLaVA-1.5-7B's shape (CLIP ViT-L/14-336 + a 32-layer 4096-wide LLaMA, random bf16 weights written by
  llava_checkpoint.write_large_checkpoint, about 14 GB on disk), the same LoRA on one record (a 336 px image, 576
  image tokens, and a short question), model.dtype=bfloat16, activation checkpointing on the decoder: its
  optimizer steps, their time and the peak RSS.
Peak RSS is the process's maximum resident set (metrics.jsonl's peak_rss_mib: model loading included); s/step
is the mean over the steps after the first. Prints a table per part; results in OUT/memory.json.
"""
import argparse
import json
import os
import shutil

import llava_checkpoint
import vs_hf


def long_records(data, out, target_chars):
    """LLaVA JSON records of many turns: each image record's turns followed by further records' turns (their
    <image> markers dropped) until the conversation holds target_chars characters."""
    with open(f"{data}/instruct.json") as f:
        records = json.load(f)
    turns = [[dict(t, value=t["value"].replace("<image>\n", "").replace("<image>", "")) for t in r["conversations"]]
             for r in records]
    out_records, k = [], 0
    for r in records:
        if "image" not in r:
            continue
        conversation = list(r["conversations"])
        while sum(len(t["value"]) for t in conversation) < target_chars:
            conversation += turns[k % len(turns)]
            k += 1
        out_records.append({"id": r["id"] + "-long", "image": r["image"], "conversations": conversation})
    path = f"{out}/long_records.json"
    with open(path, "w") as f:
        json.dump(out_records, f)
    return path


def train(args, out, name, checkpoint, records, images, max_len, batch, steps, dtype, checkpointing):
    folder = f"{out}/runs/memory/{name}"
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    bf16 = dtype == "bfloat16"
    config = {"stage": "finetune", "out": folder,
              "model": {"base": checkpoint, "adapter": vs_hf.LORA, "train_projector": True, "dtype": dtype},
              "data": {"train": [records], "images": images, "template": "vicuna_v1", "max_len": max_len,
                       "batch_size": batch, "workers": 1},
              "optim": {"steps": steps, "lr": vs_hf.LR, "warmup_ratio": 0.0, "clip": 1.0, "bf16": bf16,
                        "activation_checkpointing": checkpointing},
              "run": {"seed": 0, "log_every": 1, "save_every": 0, "threads": args.threads, "progress": "lines"}}
    config_file = f"{folder}_config.json"
    with open(config_file, "w") as f:
        json.dump(config, f, indent=1)
    vs_hf.run([args.mole, "train", "--config", config_file], f"{out}/logs/memory_{name}.log")
    with open(f"{folder}/metrics.jsonl") as f:
        windows = [w for w in map(json.loads, f) if "tokens_per_s" in w]
    assert [w["step"] for w in windows] == list(range(1, steps + 1)), "one window per step expected"
    times = [windows[0]["seconds"]] + [b["seconds"] - a["seconds"] for a, b in zip(windows, windows[1:])]
    later = times[1:] or times
    return {"dtype": dtype, "activation_checkpointing": checkpointing, "batch": batch,
            "tokens_per_step": windows[-1]["tokens"], "tokens_per_sample": windows[-1]["tokens"] / windows[-1]["samples"],
            "peak_rss_mib": windows[-1]["peak_rss_mib"], "step_seconds": times, "s_per_step": sum(later) / len(later),
            "losses": [w["loss"] for w in windows]}


def print_rows(title, rows):
    print(f"\n{title}\n")
    print("| base dtype | activation checkpointing | tokens/step | peak RSS MiB | s/step | losses |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['dtype']} | {r['activation_checkpointing']} | {r['tokens_per_step']} | {r['peak_rss_mib']:.0f} | "
              f"{r['s_per_step']:.2f} | {' '.join(f'{x:.4f}' for x in r['losses'])} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mole", default="build/mole", help="the mole program")
    ap.add_argument("--out", required=True, help="working folder (shared with vs_hf.py: tokenizer, data)")
    ap.add_argument("--parts", default="wide,7b", help="comma-separated: wide, 7b")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(f"{out}/logs", exist_ok=True)
    tokenizer = vs_hf.make_tokenizer(args.mole, out, vs_hf.make_data(args.mole, out, 64, 200))
    results = {}
    if "wide" in args.parts.split(","):
        shape = "wide"
        data = vs_hf.make_data(args.mole, out, llava_checkpoint.image_size(shape), 200)
        checkpoint = vs_hf.make_checkpoint(args.mole, out, shape, tokenizer)
        records = long_records(data, out, 8000)
        max_len = llava_checkpoint.SHAPES[shape]["max_len"]
        rows = [train(args, out, f"wide_{dtype}_{ckpt}", checkpoint, records, data, max_len, 4, args.steps, dtype, ckpt)
                for dtype in ("float32", "bfloat16") for ckpt in ("none", "decoder")]
        for r in rows:
            assert r["tokens_per_sample"] == max_len, f"samples of {r['tokens_per_sample']} tokens, not {max_len}"
        print_rows(f"wide: LLaMA 8 x 1024 + ViT 4 x 256, LoRA, batch 4 x {max_len} tokens, {args.threads} threads", rows)
        results["wide"] = rows
    if "7b" in args.parts.split(","):
        shape = "7b"
        data = vs_hf.make_data(args.mole, out, llava_checkpoint.image_size(shape), 8)
        checkpoint = f"{out}/checkpoint_7b"
        if not os.path.exists(f"{checkpoint}/model.safetensors"):
            n = llava_checkpoint.write_large_checkpoint(shape, tokenizer, checkpoint)
            print(f"7b: {checkpoint}, {n:,} parameters in bfloat16", flush=True)
        vs_hf.run([args.mole, "info", checkpoint], f"{out}/logs/info_7b.log")
        with open(f"{data}/instruct.json") as f:  # records with an image (the tower runs every step)
            image_records = [r for r in json.load(f) if "image" in r]
        with open(f"{out}/image_records_336.json", "w") as f:
            json.dump(image_records, f)
        rows = [train(args, out, "7b_bfloat16_decoder", checkpoint, f"{out}/image_records_336.json", data,
                      llava_checkpoint.SHAPES[shape]["max_len"], 1, args.steps, "bfloat16", "decoder")]
        print_rows(f"7b: CLIP ViT-L/14-336 + LLaMA 32 x 4096, LoRA, one record per step, {args.threads} threads", rows)
        print("7b step seconds: " + " ".join(f"{t:.1f}" for t in rows[0]["step_seconds"]))
        results["7b"] = rows
    with open(f"{out}/memory.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
