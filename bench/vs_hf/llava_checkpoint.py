"""Random-initialised LLaVA checkpoints for the benchmark, written by transformers as mole and transformers load them.

A checkpoint folder holds what save_pretrained writes (config.json, model.safetensors in float32), the tokenizer
files of mole's tokenizer folder and a preprocessor_config.json for LLaVA-1.5's CLIP preprocessing at the
tower's image size. The weights are transformers' own random initialisation (std 0.02): speed does not depend
on them, and both trainers start from the same file.
"""
import json
import math
import os
import shutil

import torch
import transformers
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# "demo" is the model `mole demo` trains (pipelines/cmd_demo.cpp, small_llava_config): a 2-layer ViT on 64 px
# images of 16 px patches (16 image tokens) and a 4-layer LLaMA of width 128. "medium" is 4x wider in the
# language model: a 4-layer ViT on 128 px images (64 image tokens) and an 8-layer LLaMA of width 512.
SHAPES = {
    "demo": {
        "vision": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       image_size=64, patch_size=16),
        "text": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, max_position_embeddings=512),
        "max_len": 256,
    },
    "medium": {
        "vision": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                       image_size=128, patch_size=16),
        "text": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                     num_key_value_heads=8, max_position_embeddings=1024),
        "max_len": 512,
    },
    # bench/vs_hf/memory.py: activation checkpointing at a text width of 1024 and samples of 1024 tokens
    "wide": {
        "vision": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                       image_size=128, patch_size=16),
        "text": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                     num_key_value_heads=16, max_position_embeddings=2048),
        "max_len": 1024,
    },
    # LLaVA-1.5-7B's shape: CLIP ViT-L/14 at 336 px (576 image tokens, the second-to-last layer's features) and
    # LLaMA-2-7B (32 layers of width 4096, FFN 11008, vocabulary 32000); written in bfloat16 (write_large_checkpoint)
    "7b": {
        "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                       image_size=336, patch_size=14),
        "text": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, max_position_embeddings=4096, vocab_size=32000),
        "vision_feature_layer": -2,
        "max_len": 2048,
    },
}

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def image_size(shape):
    return SHAPES[shape]["vision"]["image_size"]


def llava_config(shape, tokenizer):
    """The LlavaConfig of a shape; vocabulary and special ids from the tokenizer (as mole's pretrain sets them)."""
    s = SHAPES[shape]
    vision = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=s["vision"]["hidden_size"],
                              **s["vision"])
    # the vocabulary is the tokenizer's unless the shape sets a larger one (as LLaVA's 32064 rows over 32002 tokens)
    text = LlamaConfig(**dict(dict(vocab_size=len(tokenizer)), **s["text"]), rms_norm_eps=1e-5, rope_theta=10000.0,
                       tie_word_embeddings=False, hidden_act="silu", bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
                       vision_feature_layer=s.get("vision_feature_layer", -1), vision_feature_select_strategy="default",
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def preprocessor_config(size):
    # As llava-hf/llava-1.5-7b-hf's preprocessor_config.json, at the tower's size
    # (tests/reference/make_image_reference.py hf_config).
    return {"crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "resample": 3,
            "rescale_factor": 1 / 255, "size": {"shortest_edge": size}}


def make_checkpoint(shape, tokenizer_dir, out_dir, seed=0):
    """Writes the shape's random LLaVA to out_dir; returns its parameter count."""
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(shape, tokenizer)).to(torch.float32)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer_dir, name), out_dir)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(image_size(shape)), f, indent=2)
    return sum(p.numel() for p in model.parameters())


def write_large_checkpoint(shape, tokenizer_dir, out_dir, dtype=torch.bfloat16, seed=0):
    """As make_checkpoint, for models too large to build in memory: transformers' LlavaForConditionalGeneration is
    built on the meta device for its config, tensor names and shapes, and model.safetensors is written one tensor
    at a time (normal std 0.02 for weights and embeddings, 1 for norm weights, 0 for biases) in `dtype`. Memory
    stays at one tensor. Returns the parameter count."""
    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llava_config(shape, tokenizer)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    tensors = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    dtype_name = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float16: "F16"}[dtype]
    item = torch.tensor([], dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape_ in tensors:
        size = item * (1 if not shape_ else math.prod(shape_))
        header[name] = {"dtype": dtype_name, "shape": list(shape_), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    generator = torch.Generator().manual_seed(seed)
    with open(os.path.join(out_dir, "model.safetensors.partial"), "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, shape_ in tensors:
            if name.endswith(".bias"):
                t = torch.zeros(shape_, dtype=dtype)
            elif "norm" in name:
                t = torch.ones(shape_, dtype=dtype)
            else:
                t = torch.empty(shape_, dtype=dtype).normal_(0.0, 0.02, generator=generator)
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())
    os.replace(os.path.join(out_dir, "model.safetensors.partial"), os.path.join(out_dir, "model.safetensors"))
    config.dtype = dtype
    config.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(tokenizer_dir, name), out_dir)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(image_size(shape)), f, indent=2)
    return sum(math.prod(s) for _, s in tensors)
