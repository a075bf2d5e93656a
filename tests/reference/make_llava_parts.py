#!/usr/bin/env python3
"""The separate checkpoints LLaVA's stage 1 starts from, written by Hugging Face transformers, tiny and random; and a
check that a folder mole wrote loads in transformers' LlavaForConditionalGeneration.

Mode 1, fixtures:
    .venv/bin/python tests/reference/make_llava_parts.py --out DIR
  writes
    DIR/clip_vision/     CLIPVisionModel.save_pretrained (transformers 5: flat keys embeddings..., encoder...)
                         + preprocessor_config.json (CLIPImageProcessor, 28 px)
    DIR/clip_model/      CLIPModel.save_pretrained (vision_model.*, text_model.*, visual_projection, text_projection,
                         logit_scale) with the same vision weights; its config.json carries a legacy
                         vision_config_dict whose hidden_act overrides vision_config's, as CLIPConfig reads it
    DIR/llama_stock/     a LlamaForCausalLM whose vocabulary is the sentencepiece pieces alone, its tokenizer without
                         <image> or <pad> (a stock Vicuna / LLaMA folder)
    DIR/llama/           LlamaForCausalLM.save_pretrained + a LLaMA-style sentencepiece tokenizer (tokenizer.model,
                         tokenizer_config.json, added_tokens.json with <image> and <pad>, special_tokens_map.json)
    DIR/llava_original/  the original LLaVA repository layout (liuhaotian/llava-v1.5-*): config.json with the LLaMA
                         fields at the top plus mm_*; model.safetensors with model.embed_tokens, model.layers.N...,
                         model.norm, lm_head, model.mm_projector.{0,2}.*; no vision tower; the tokenizer files.
                         Made by inverting transformers' convert_llava_weights_to_hf.py (KEYS_TO_MODIFY_MAPPING),
                         then checked by applying that mapping forwards.
    DIR/llava_original_hf/  the same model as llava-hf (what convert_llava_weights_to_hf.py makes of it, the
                         vocabulary already holding <image>), with inputs.safetensors and expected.safetensors
                         (transformers' logits on it)
    DIR/parts_info.json
Mode 2, check a llava-hf folder written by another tool:
    .venv/bin/python tests/reference/make_llava_parts.py --check-llava FOLDER --inputs IN.safetensors --out OUT
  loads FOLDER with LlavaForConditionalGeneration.from_pretrained (exit 1 on any missing, unexpected or mis-shaped
  weight), its tokenizer with LlamaTokenizer (<image> must be config.image_token_id) and its preprocessor with
  CLIPImageProcessor (crop = the vision tower's image_size), and writes `logits` for IN's input_ids, attention_mask
  and pixel_values.
Deterministic (fixed seeds, CPU, float32, eager attention), offline; mode 1 replaces only its own folders.
"""
import argparse, io, json, os, shutil, sys

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the hub
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
import sentencepiece as spm
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel, LlamaConfig,
                          LlamaForCausalLM, LlamaTokenizer, LlavaConfig, LlavaForConditionalGeneration)

transformers.logging.set_verbosity_error()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_llava import redraw  # noqa: E402  (O(1) weights, so that every layer matters)
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

N_PIECES = 400  # sentencepiece pieces; <image> and <pad> come right after, as llava-hf's tokenizers have them
IMAGE, PAD = N_PIECES, N_PIECES + 1
VOCAB = 448  # the language model's rows: the tokenizer's 402 padded to a multiple of 64, as the converter pads
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
              patch_size=7, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16)  # 4 x 4 patches
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=PAD)
# The original layout's choices differ from mole's defaults on purpose: the last layer, CLS kept.
ORIGINAL_MM = dict(mm_vision_select_layer=-1, mm_vision_select_feature="cls_patch", mm_projector_type="mlp2x_gelu")

# transformers/models/llava/convert_llava_weights_to_hf.py, applied in this order to every original key.
KEYS_TO_MODIFY_MAPPING = {
    "model.vision_tower.": "",
    ".vision_resampler": "",
    "model.mm_projector": "multi_modal_projector",
    "model": "model.model",
    "vision_model.model": "vision_model",
    "lm_head": "language_model.lm_head",
    "model.model": "language_model.model",
    "multi_modal_projector.0": "multi_modal_projector.linear_1",
    "multi_modal_projector.2": "multi_modal_projector.linear_2",
}


def convert_state_dict_to_hf(state_dict):
    """convert_llava_weights_to_hf.py's convert_state_dict_to_hf: original names -> llava-hf (older layout)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".inv_freq"):
            continue
        for old, new in KEYS_TO_MODIFY_MAPPING.items():
            if old in key:
                key = key.replace(old, new)
        out[key] = value
    return out


def to_original(key):
    """The inverse, for the keys of a llava-hf model without its vision tower (the original keeps it outside)."""
    for prefix, original in (("model.language_model.", "model."), ("language_model.model.", "model."),
                             ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
                             ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                             ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
                             ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
                             ("multi_modal_projector.linear_2.", "model.mm_projector.2.")):
        if key.startswith(prefix):
            return original + key[len(prefix):]
    raise KeyError(key)


def corpus_lines():
    """Simple English about colours and shapes plus the template words (the shapes data's vocabulary)."""
    colours = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
    shapes = ["circle", "square", "triangle", "star", "cube", "ring", "cone"]
    places = ["next to", "above", "below", "inside", "behind", "left of", "right of"]
    lines = []
    for i in range(400):
        c1, c2 = colours[i % 8], colours[(i * 3 + 1) % 8]
        s1, s2 = shapes[(i * 5) % 7], shapes[(i * 2 + 3) % 7]
        n = (i * 37) % 100
        lines.append([f"The {c1} {s1} is {places[i % 7]} the {c2} {s2}.",
                      f"There are {n} {c1} {s1}s and {i} {s2}s in the picture.",
                      f"USER: What colour is the {s1}? ASSISTANT: The {s1} is {c1}.",
                      f"A {c1} {s1} on a {c2} background, drawn small."][i % 4])
    lines += ["A chat between a curious user and an artificial intelligence assistant.",
              "The assistant gives helpful, detailed, and polite answers to the user's questions."]
    return lines


def write_tokenizer(folder):
    """A LLaMA-style tokenizer folder: sentencepiece BPE with LLaMA's trainer settings (byte fallback, split digits,
    identity normalisation, dummy prefix), then <image> and <pad> as added tokens right after the pieces."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="bpe", vocab_size=N_PIECES,
        character_coverage=1.0, byte_fallback=True, split_digits=True, split_by_unicode_script=True,
        split_by_whitespace=True, split_by_number=True, treat_whitespace_as_suffix=False,
        allow_whitespace_only_pieces=True, num_threads=1, hard_vocab_limit=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        shuffle_input_sentence=False, minloglevel=2)
    with open(f"{folder}/tokenizer.model", "wb") as f:
        f.write(model.getvalue())
    entry = lambda content: {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True}
    decoder = {str(i): entry(t) for i, t in ((0, "<unk>"), (1, "<s>"), (2, "</s>"), (IMAGE, "<image>"), (PAD, "<pad>"))}
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "added_tokens_decoder": decoder, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "legacy": True, "clean_up_tokenization_spaces": False, "model_max_length": 512,
              "padding_side": "right", "sp_model_kwargs": {}}
    json.dump(config, open(f"{folder}/tokenizer_config.json", "w"), indent=1)
    json.dump({"<image>": IMAGE, "<pad>": PAD}, open(f"{folder}/added_tokens.json", "w"))
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
              open(f"{folder}/special_tokens_map.json", "w"), indent=1)
    tok = LlamaTokenizer.from_pretrained(folder)
    assert len(tok) == PAD + 1 and tok.convert_tokens_to_ids("<image>") == IMAGE, (len(tok), tok.get_added_vocab())


def copy_tokenizer(src, dst):
    for f in ("tokenizer.model", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        shutil.copy(f"{src}/{f}", dst)


def make_inputs(n_feat, seed):
    """Two rows, right-padded (row 1 is 4 tokens shorter), each with one image's placeholders."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n_pre, n_post in [(5, 7), (3, 5)]:
        pre, post = torch.randint(3, N_PIECES, (n_pre,), generator=g), torch.randint(3, N_PIECES, (n_post,), generator=g)
        rows.append(torch.cat([torch.tensor([1]), pre, torch.full((n_feat,), IMAGE), post]))
    T = max(len(r) for r in rows)
    ids, mask = torch.full((2, T), PAD, dtype=torch.long), torch.zeros(2, T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    pix = torch.randn(2, 3, VISION["image_size"], VISION["image_size"], generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pix}


def load_strict(folder):
    model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True,
                                                                attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    if problems:
        sys.exit(f"{folder}: transformers reports {problems}")
    return model.eval()


@torch.no_grad()
def logits_of(model, inp):
    return model(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                 pixel_values=inp["pixel_values"]).logits.clone()


def write_parts(out):
    names = ("clip_vision", "clip_model", "llama", "llava_original", "llava_original_hf", "llama_stock")
    for n in names:
        shutil.rmtree(os.path.join(out, n), ignore_errors=True)
    clip_vision, clip_model, llama, original, original_hf, llama_stock = (os.path.join(out, n) for n in names)

    torch.manual_seed(11)
    vision = redraw(CLIPVisionModel(CLIPVisionConfig(**VISION)).eval(), 11)
    vision.save_pretrained(clip_vision, safe_serialization=True)
    size = VISION["image_size"]
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(clip_vision)

    # CLIPModel with the same vision weights and a random text tower
    torch.manual_seed(12)
    text_tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                      max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=2, projection_dim=16)
    full = CLIPModel(CLIPConfig(vision_config=VISION, text_config=text_tower, projection_dim=16)).eval()
    full.vision_model.load_state_dict(vision.state_dict(), strict=True)
    full.save_pretrained(clip_model, safe_serialization=True)
    processor.save_pretrained(clip_model)
    # a legacy vision_config_dict (as older hub CLIP configs carry) whose values win over vision_config's
    cfg = json.load(open(f"{clip_model}/config.json"))
    cfg["vision_config"]["hidden_act"] = "gelu"
    cfg["vision_config_dict"] = {"hidden_act": "quick_gelu"}
    json.dump(cfg, open(f"{clip_model}/config.json", "w"), indent=1)
    assert CLIPConfig.from_pretrained(clip_model).vision_config.hidden_act == "quick_gelu"
    keys = set(load_file(f"{clip_model}/model.safetensors"))
    assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= keys, sorted(keys)[:8]
    assert any(k.startswith("text_model.") for k in keys) and any(k.startswith("vision_model.") for k in keys)

    torch.manual_seed(13)
    lm = redraw(LlamaForCausalLM(LlamaConfig(**TEXT)).eval(), 13)
    lm.save_pretrained(llama, safe_serialization=True)
    write_tokenizer(llama)
    lm_keys = set(load_file(f"{llama}/model.safetensors"))
    assert "lm_head.weight" in lm_keys and "model.embed_tokens.weight" in lm_keys, sorted(lm_keys)[:5]

    # A stock LLaMA / Vicuna folder: the vocabulary is the sentencepiece pieces alone, the tokenizer has no <image>
    # nor <pad> (mole adds them and grows the embeddings, as convert_llava_weights_to_hf.py does).
    torch.manual_seed(15)
    stock = redraw(LlamaForCausalLM(LlamaConfig(**{**TEXT, "vocab_size": N_PIECES, "pad_token_id": None})).eval(), 15)
    stock.save_pretrained(llama_stock, safe_serialization=True)
    shutil.copy(f"{llama}/tokenizer.model", llama_stock)
    entry = lambda content: {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True}
    json.dump({"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
               "added_tokens_decoder": {str(i): entry(t) for i, t in ((0, "<unk>"), (1, "<s>"), (2, "</s>"))},
               "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "legacy": True,
               "clean_up_tokenization_spaces": False, "model_max_length": 512, "padding_side": "right",
               "sp_model_kwargs": {}}, open(f"{llama_stock}/tokenizer_config.json", "w"), indent=1)
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
              open(f"{llama_stock}/special_tokens_map.json", "w"), indent=1)
    assert len(LlamaTokenizer.from_pretrained(llama_stock)) == N_PIECES

    # The original layout: a LLaVA on these parts with its own trained projector, saved as LLaVA's repository saves
    # it (no vision tower: LLaVA loads that by mm_vision_tower), and as the converter would turn it into llava-hf.
    llava_cfg = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=LlamaConfig(**TEXT),
                            image_token_index=IMAGE, projector_hidden_act="gelu",
                            vision_feature_layer=ORIGINAL_MM["mm_vision_select_layer"],
                            vision_feature_select_strategy="full", multimodal_projector_bias=True,
                            tie_word_embeddings=False, pad_token_id=PAD)
    torch.manual_seed(14)
    llava = LlavaForConditionalGeneration(llava_cfg).eval()
    llava.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
    llava.model.language_model.load_state_dict(lm.model.state_dict(), strict=True)
    llava.lm_head.load_state_dict(lm.lm_head.state_dict(), strict=True)
    redraw(llava.model.multi_modal_projector, 14)
    llava.save_pretrained(original_hf, safe_serialization=True)
    copy_tokenizer(llama, original_hf)
    processor.save_pretrained(original_hf)

    hf = load_file(f"{original_hf}/model.safetensors")
    original_weights = {to_original(k): v for k, v in hf.items() if "vision_tower." not in k}
    os.makedirs(original)
    save_file(original_weights, f"{original}/model.safetensors", metadata={"format": "pt"})
    top = LlamaConfig(**TEXT).to_dict()
    for k in ("transformers_version", "dtype"):
        top.pop(k, None)
    top.update(model_type="llava", architectures=["LlavaLlamaForCausalLM"], torch_dtype="float32",
               mm_vision_tower="tiny-clip-vit (tests/reference/make_llava_parts.py clip_vision)",
               mm_hidden_size=VISION["hidden_size"], image_aspect_ratio="pad", mm_use_im_start_end=False,
               mm_use_im_patch_token=False, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, use_mm_proj=True,
               **ORIGINAL_MM)
    json.dump(top, open(f"{original}/config.json", "w"), indent=1)
    copy_tokenizer(llama, original)

    # The converter's own mapping takes the original keys (plus the CLIP tower it loads by name) back to a folder
    # transformers loads without complaint and that computes what llava_original_hf computes.
    converted = convert_state_dict_to_hf(original_weights)
    converted.update({"vision_tower.vision_model." + k: v for k, v in load_file(f"{clip_vision}/model.safetensors").items()})
    check_dir = os.path.join(out, ".llava_original_converted")
    shutil.rmtree(check_dir, ignore_errors=True)
    os.makedirs(check_dir)
    shutil.copy(f"{original_hf}/config.json", check_dir)
    save_file(converted, f"{check_dir}/model.safetensors", metadata={"format": "pt"})
    n_feat = (VISION["image_size"] // VISION["patch_size"]) ** 2 + 1  # cls_patch keeps CLS
    inp = make_inputs(n_feat, 21)
    expected = logits_of(load_strict(original_hf), inp)
    assert torch.equal(logits_of(load_strict(check_dir), inp), expected), "converted original != llava_original_hf"
    shutil.rmtree(check_dir)
    save_file(inp, f"{original_hf}/inputs.safetensors", metadata={"format": "pt"})
    save_file({"logits": expected}, f"{original_hf}/expected.safetensors", metadata={"format": "pt"})

    info = {"transformers": transformers.__version__, "torch": torch.__version__, "image_token_index": IMAGE,
            "pad_token_id": PAD, "vocab_size": VOCAB, "n_pieces": N_PIECES, "vision": VISION, "text": TEXT,
            "original_mm": ORIGINAL_MM, "original_features_per_image": n_feat,
            "clip_vision_keys": "flat (transformers 5 CLIPVisionModel)", "clip_model_keys": "vision_model.*",
            "compare_only": "positions with attention_mask == 1", "attn_implementation": "eager"}
    json.dump(info, open(f"{out}/parts_info.json", "w"), indent=1, sort_keys=True)
    print(f"wrote {out}: {', '.join(names)}")


def check_llava(folder, inputs, out):
    model = load_strict(folder)
    tok = LlamaTokenizer.from_pretrained(folder)
    if tok.convert_tokens_to_ids("<image>") != model.config.image_token_id:
        sys.exit(f"{folder}: the tokenizer's <image> is {tok.convert_tokens_to_ids('<image>')}, config.json's "
                 f"image_token_id {model.config.image_token_id}")
    processor = CLIPImageProcessor.from_pretrained(folder)
    size = model.config.vision_config.image_size
    if (processor.crop_size["height"], processor.crop_size["width"]) != (size, size):
        sys.exit(f"{folder}: preprocessor crop {processor.crop_size} is not the vision tower's {size}")
    inp = load_file(inputs)
    save_file({"logits": logits_of(model, inp)}, out, metadata={"format": "pt"})
    print(f"{folder}: loaded by transformers {transformers.__version__} (no missing, unexpected or mis-shaped "
          f"weights); logits written to {out}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--check-llava")
    ap.add_argument("--inputs")
    args = ap.parse_args()
    if args.check_llava:
        check_llava(args.check_llava, args.inputs, args.out)
    else:
        write_parts(args.out)


if __name__ == "__main__":
    sys.exit(main())
