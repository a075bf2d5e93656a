"""Random-initialised LLaVA checkpoints for the benchmark, written by transformers as mole and transformers load them.

A checkpoint folder holds what save_pretrained writes (config.json, model.safetensors in float32), the tokenizer
files of mole's tokenizer folder and a preprocessor_config.json for LLaVA-1.5's CLIP preprocessing at the
tower's image size. The weights are transformers' own random initialisation (std 0.02): speed does not depend
on them, and both trainers start from the same file.
"""
import json
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
}

TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def image_size(shape):
    return SHAPES[shape]["vision"]["image_size"]


def llava_config(shape, tokenizer):
    """The LlavaConfig of a shape; vocabulary and special ids from the tokenizer (as mole's pretrain sets them)."""
    s = SHAPES[shape]
    vision = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=s["vision"]["hidden_size"],
                              **s["vision"])
    text = LlamaConfig(vocab_size=len(tokenizer), rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                       hidden_act="silu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, **s["text"])
    return LlavaConfig(vision_config=vision, text_config=text,
                       image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
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
