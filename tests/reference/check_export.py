#!/usr/bin/env python3
"""Runs what `mole export` wrote the way a transformers / PEFT user would, for tests/pipelines/test_export.cpp.

    .venv/bin/python tests/reference/check_export.py --cases CASES.json --out OUT.json
        [--llava DIR] [--peft DIR --base DIR]

CASES.json: [{"image": path, "question": str, "max_new_tokens": n}, ...]. For each case: the processor of the
folder (LlavaProcessor.from_pretrained: preprocessor_config.json, processor_config.json, chat_template.jinja,
tokenizer), its chat template on [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
with add_generation_prompt, processor(images=..., text=...), and greedy generate. --llava: the exported llava-hf
folder with LlavaForConditionalGeneration; --peft: PeftModel.from_pretrained(LlavaForConditionalGeneration(base),
DIR), the processor read from DIR. OUT.json: {"transformers", "peft", "<form>": {"prompt": [str], "input_ids":
[[ids]], "generated": [[ids]]}} with the generated ids up to, not including, eos.
"""
import argparse, json, os

os.environ["HF_HUB_OFFLINE"] = "1"
import torch
import transformers
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

transformers.logging.set_verbosity_error()


def run(model, processor, cases):
    out = {"prompt": [], "input_ids": [], "generated": []}
    tok = processor.tokenizer
    for c in cases:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": c["question"]}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open(c["image"]).convert("RGB"), text=prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=c["max_new_tokens"], do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0)
        new = ids[0, inputs["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        out["prompt"].append(prompt)
        out["input_ids"].append(inputs["input_ids"][0].tolist())
        out["generated"].append(new)
    return out


def tokenizer_json_differences(folder):
    """The top-level keys (model.* for the model) where the folder's tokenizer.json differs from the one
    transformers' LlamaTokenizer converts its tokenizer.model to (loaded without config.json, which would make
    AutoTokenizer take the generic backend)."""
    import shutil, tempfile
    from transformers import LlamaTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
            if os.path.exists(os.path.join(folder, f)):
                shutil.copy(os.path.join(folder, f), tmp)
        LlamaTokenizer.from_pretrained(tmp).save_pretrained(tmp + "/saved")
        with open(tmp + "/saved/tokenizer.json") as f:
            want = json.load(f)
    with open(os.path.join(folder, "tokenizer.json")) as f:
        got = json.load(f)
    diffs = [k for k in want if k != "model" and got.get(k) != want[k]]
    diffs += ["model." + k for k in want["model"] if got["model"].get(k) != want["model"][k]]
    return diffs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--llava")
    ap.add_argument("--peft")
    ap.add_argument("--base")
    args = ap.parse_args()
    with open(args.cases) as f:
        cases = json.load(f)
    result = {"transformers": transformers.__version__}
    if args.llava:
        result["tokenizer_json_differs"] = tokenizer_json_differences(args.llava)
        model = LlavaForConditionalGeneration.from_pretrained(args.llava, dtype=torch.float32).eval()
        result["llava"] = run(model, LlavaProcessor.from_pretrained(args.llava), cases)
    if args.peft:
        import peft
        from peft import PeftModel
        result["peft_version"] = peft.__version__
        base = LlavaForConditionalGeneration.from_pretrained(args.base, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, args.peft).eval()
        result["peft"] = run(model, LlavaProcessor.from_pretrained(args.peft), cases)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
