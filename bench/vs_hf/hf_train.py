"""LLaVA-1.5 LoRA finetuning with Hugging Face transformers + PEFT (or MixLoRA's MoE-LoRA), timed per step.

    python bench/vs_hf/hf_train.py --model CKPT --tokenizer TOKENIZER --data instruct.json --images DIR \
        --max-len 256 --steps 15 --threads 2 --out result.json [--adapter lora|mixlora]

The recipe is LLaVA-1.5's finetune_lora (llava/train/train.py), in float32 on the CPU:
  - records formatted with the vicuna_v1 template and masked as preprocess_v1 does (only the answers and their
    </s> supervised); <image> expanded to the tower's patch count, as LlavaForConditionalGeneration expects;
  - images padded to a square with the mean colour (expand2square), then transformers' CLIP processor (its PIL
    backend: CLIPImageProcessor without torchvision) from the checkpoint's preprocessor_config.json;
  - batches padded on the right with an attention mask, built by a torch DataLoader with one worker process;
  - lora: PEFT LoRA on q/k/v/o/gate/up/down of the language model only; mixlora: MixLoRA's experts on the FFN
    and its LoRA on attention. Either way the projector is trained and the vision tower frozen;
  - torch.optim.AdamW (no weight decay), cosine schedule with 3% warm-up, clip_grad_norm_ 1.0.
The batches are mole's (data/loader.cpp epoch_batches with seed 0, no length grouping), so both programs train
on the same samples in the same order. Writes --out: trainable parameter count and, per step, the wall-clock
time at its end, the time it waited for its batch, non-padding tokens (attention_mask sum, image placeholders
expanded), samples and loss.
"""
import argparse
import functools
import json
import math
import os
import time
from types import SimpleNamespace

import torch
import transformers
from PIL import Image
from transformers import AutoTokenizer, LlavaForConditionalGeneration, get_cosine_schedule_with_warmup
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

IGNORE_INDEX = -100
FFN_TARGETS = ["gate_proj", "up_proj", "down_proj"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"] + FFN_TARGETS
# LLaVA conversation.py conv_vicuna_v1.system
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


# ---- the batches: mole's order ----------------------------------------------------------------------------------

MASK64 = (1 << 64) - 1


class SplitMix64:
    """data/loader.cpp SplitMix64: the generator, its rejection sampling and its Fisher-Yates, bit for bit."""

    def __init__(self, state):
        self.state = state & MASK64

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        limit = MASK64 - MASK64 % n
        while True:
            x = self.next()
            if x < limit:
                return x % n

    def shuffle(self, v):
        for i in range(len(v), 1, -1):
            j = self.below(i)
            v[i - 1], v[j] = v[j], v[i - 1]


def mole_batches(n_records, batch_size, n_batches, seed=0):
    """The first n_batches batches mole's DataLoader hands out (epoch_batches without length grouping, drop_last
    off, epoch after epoch), as record indices."""
    batches, epoch = [], 0
    while len(batches) < n_batches:
        order = list(range(n_records))
        SplitMix64(seed * 0x100000001B3 + epoch * 0x9E3779B97F4A7C15 + 1).shuffle(order)
        batches += [order[i:i + batch_size] for i in range(0, n_records, batch_size)]
        epoch += 1
    return batches[:n_batches]


# ---- one sample: LLaVA's preprocessing --------------------------------------------------------------------------

def expand2square(image, background):
    # llava/mm_utils.py expand2square
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, (side - h) // 2))
    return out


class LlavaSamples(torch.utils.data.Dataset):
    """LLaVA records -> (input_ids, labels, pixel_values or None), as LazySupervisedDataset + preprocess_v1."""

    def __init__(self, records, image_dir, tokenizer, processor, n_image_tokens, max_len):
        self.records, self.image_dir, self.tokenizer, self.processor = records, image_dir, tokenizer, processor
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.n_image_tokens, self.max_len = n_image_tokens, max_len
        self.background = tuple(int(x * 255) for x in processor.image_mean)

    def __len__(self):
        return len(self.records)

    def tokenize_with_image(self, prompt):
        # llava/mm_utils.py tokenizer_image_token: each chunk around <image> tokenized on its own (with BOS, which
        # the later chunks drop), one image id between chunks.
        chunks = [self.tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
        ids = list(chunks[0])
        for chunk in chunks[1:]:
            ids += [self.image_id] + chunk[1:]
        return ids

    def conversation(self, turns):
        # preprocess_multimodal moves <image> to the front of its turn; conv_vicuna_v1.get_prompt (TWO style).
        prompt = VICUNA_SYSTEM + " "
        for human, gpt in zip(turns[0::2], turns[1::2]):
            question = human["value"]
            if "<image>" in question:
                question = ("<image>\n" + question.replace("<image>", "").strip()).strip()
            prompt += "USER: " + question + " ASSISTANT: " + gpt["value"] + "</s>"
        return prompt

    def __getitem__(self, i):
        record = self.records[i]
        prompt = self.conversation(record["conversations"])
        ids = self.tokenize_with_image(prompt)
        # preprocess_v1's masking: per round (split on </s>), the instruction part up to "ASSISTANT: " unsupervised
        labels, cur = list(ids), 1
        labels[0] = IGNORE_INDEX
        for round_text in prompt.split("</s>")[:-1]:
            instruction = round_text.split(" ASSISTANT: ")[0] + " ASSISTANT: "
            round_len = len(self.tokenize_with_image(round_text))
            instruction_len = len(self.tokenize_with_image(instruction)) - 2
            labels[cur:cur + instruction_len] = [IGNORE_INDEX] * instruction_len
            cur += round_len
        if cur != len(ids):
            raise ValueError(f"record {record.get('id')}: tokenization mismatch {cur} vs {len(ids)}")
        # the image id -> one id per image feature (LlavaForConditionalGeneration's input), then max_len
        input_ids, target = [], []
        for token, label in zip(ids, labels):
            n = self.n_image_tokens if token == self.image_id else 1
            input_ids += [token] * n
            target += [label] * n
        input_ids, target = input_ids[:self.max_len], target[:self.max_len]
        pixel_values = None
        if "image" in record:
            image = Image.open(os.path.join(self.image_dir, record["image"])).convert("RGB")
            image = expand2square(image, self.background)
            pixel_values = self.processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
        return torch.tensor(input_ids), torch.tensor(target), pixel_values


def pad_right(samples, pad_id):
    """DataCollatorForSupervisedDataset: right padding, labels -100 and mask 0 on padding; images in sample order."""
    length = max(len(ids) for ids, _, _ in samples)
    input_ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, (ids, target, _) in enumerate(samples):
        input_ids[row, :len(ids)], labels[row, :len(ids)], mask[row, :len(ids)] = ids, target, 1
    images = [pixels for _, _, pixels in samples if pixels is not None]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask,
            "pixel_values": torch.stack(images) if images else None}


# ---- the adapters -----------------------------------------------------------------------------------------------

def add_peft_lora(model, rank, alpha, dropout):
    from peft import LoraConfig, get_peft_model

    targets = r".*language_model.*\.(" + "|".join(TARGETS) + ")"  # the language model only, never the ViT
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    return model, [p for p in model.parameters() if p.requires_grad]


def add_mixlora(model, rank, alpha, dropout, n_experts, top_k):
    """MixLoRA (pip mixlora) on the language model: its injector puts LoRA experts on the FFN (one router per
    block, top-k, shared gate/up/down base projections) and LoRA on attention. The package only loads trained
    weights, so it is given freshly initialised ones (A Kaiming-uniform as its LoraLinear, B zero, router std
    0.02) as trainable tensors. Its forward computes no balance loss (that lives in the MoE-PEFT trainer)."""
    from mixlora import MixLoraConfig, inject_adapter_in_model

    text = model.model.language_model
    hidden = model.config.text_config.hidden_size
    config = MixLoraConfig.from_config({
        "base_model_name_or_path": "", "task_type": "CAUSAL_LM", "peft_type": "MIXLORA", "r": rank,
        "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": TARGETS, "routing_strategy": "mixlora",
        "num_experts": n_experts, "top_k": top_k, "act_fn": model.config.text_config.hidden_act})
    config.adapter_name_, config.dtype_ = "default", torch.float32
    config.check()

    def add_lora(prefix, linear):
        a = torch.empty(rank, linear.in_features)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        weights[prefix + ".lora_A.weight"] = a
        weights[prefix + ".lora_B.weight"] = torch.zeros(linear.out_features, rank)

    weights = {}
    for i, layer in enumerate(text.layers):
        for name in TARGETS[:4]:
            add_lora(f"mixlora.layers.{i}.self_attn.{name}", getattr(layer.self_attn, name))
        for name in FFN_TARGETS:
            for e in range(n_experts):
                add_lora(f"mixlora.layers.{i}.mlp.{name}.experts.{e}", getattr(layer.mlp, name))
        weights[f"mixlora.layers.{i}.mlp.moe_gate.weight"] = (0.02 * torch.randn(n_experts, hidden)).requires_grad_()
    # inject_adapter_in_model walks model.model.layers and reads model.config.model_type ("llama")
    inject_adapter_in_model(SimpleNamespace(model=text, config=model.config.text_config), config, weights)
    # the experts live in plain dicts (not submodules) and the router is a bare tensor: collect them by hand
    trainable = [p for n, p in text.named_parameters() if ".lora_" in n]
    for layer in text.layers:
        moe = layer.mlp.mixlora_moes["default"]
        trainable += [moe.gate_] + [p for expert in moe.experts_.values() for n, p in expert.named_parameters()
                                    if n.startswith("lora_")]
    return model, trainable


# ---- the run ----------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="llava checkpoint folder (with its preprocessor_config.json)")
    # The tokenizer folder itself: from a folder whose config.json says "llava", transformers 5.23's AutoTokenizer
    # builds a generic TokenizersBackend without LLaMA's dummy prefix instead of the LlamaTokenizer named in
    # tokenizer_config.json, and its ids differ from mole's.
    ap.add_argument("--tokenizer", required=True, help="mole's tokenizer folder (train-tokenizer's output)")
    ap.add_argument("--data", required=True, help="LLaVA JSON records")
    ap.add_argument("--images", required=True, help="folder the records' image paths are relative to")
    ap.add_argument("--max-len", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True, help="optimizer steps, warm-up included")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--adapter", choices=["lora", "mixlora"], default="lora")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)  # MixLoraConfig.check wants an int
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    processor = CLIPImageProcessorPil.from_pretrained(args.model)
    model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
    model.requires_grad_(False)
    if args.adapter == "lora":
        model, trainable = add_peft_lora(model, args.rank, args.alpha, args.dropout)
    else:
        model, trainable = add_mixlora(model, args.rank, args.alpha, args.dropout, args.experts, args.top_k)
    projector = [p for n, p in model.named_parameters() if "multi_modal_projector" in n]
    for p in projector:
        p.requires_grad_(True)  # LLaVA's initialize_vision_modules: the projector trains beside the adapter
    trainable += projector
    vision_trainable = sum(p.numel() for n, p in model.named_parameters() if "vision_tower" in n and p.requires_grad)
    assert vision_trainable == 0, "the vision tower must stay frozen"

    with open(args.data) as f:
        records = json.load(f)
    vision_config = model.config.vision_config
    n_image_tokens = (vision_config.image_size // vision_config.patch_size) ** 2  # strategy "default": CLS dropped
    samples = LlavaSamples(records, args.images, tokenizer, processor, n_image_tokens, args.max_len)
    batches = mole_batches(len(records), args.batch_size, args.steps)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=batches, num_workers=1,
                                         collate_fn=functools.partial(pad_right, pad_id=tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.03 * args.steps), args.steps)

    steps = []
    model.train()
    start = time.perf_counter()
    batches = iter(loader)
    for _ in range(args.steps):
        wait_start = time.perf_counter()
        batch = next(batches)
        data_wait = time.perf_counter() - wait_start
        loss = model(**batch, use_cache=False).loss  # as LLaVA's train.py: no KV cache while training
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        steps.append({"end_s": time.perf_counter() - start, "tokens": int(batch["attention_mask"].sum()),
                      "samples": len(batch["input_ids"]), "loss": loss.item(), "data_wait_s": data_wait})
    with open(args.out, "w") as f:
        json.dump({"adapter": args.adapter, "trainable_params": sum(p.numel() for p in trainable), "steps": steps},
                  f, indent=1)


if __name__ == "__main__":
    main()
