#!/usr/bin/env python3
"""Write tiny random LLaVA checkpoints plus reference tensors from Hugging Face transformers.

    .venv/bin/python tests/reference/make_tiny_llava.py --out DIR

Writes DIR/tiny_llava (as save_pretrained writes it), DIR/tiny_llava_hub_older (same weights in the classic llava-hf
layout), DIR/tiny_llava_other_layout (same weights, keys renamed to
the other LLaVA key layout), DIR/tiny_llava_variant (other options, sharded) and, in each model folder,
inputs_{left,right}.safetensors, expected_{left,right}.safetensors, generate.safetensors, reference_info.json.
Deterministic (fixed seeds, CPU, float32), offline, and it replaces those folders on every run.
"""
import argparse, json, os, shutil, sys

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the hub
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

transformers.logging.set_verbosity_error()
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and run-to-run reduction-order noise)
BOS, EOS, PAD, IMG = 1, 2, 0, 150
# transformers 5.23 generate() builds position_ids as (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) (4.x used 1).
# We pass position_ids explicitly to forward, built the same way, so that left-padded rows are well defined (the
# forward default is arange(T), which would shift every left-padded row) and identical to the generate() prefill.
# Only pad positions (whose outputs are meaningless anyway) depend on this fill value.
PAD_POSITION_FILL = 0


def make_config(variant):
    v = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
             patch_size=7, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=16)  # 4x4 = 16 patches
    t = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=160, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
             tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    top = dict(image_token_index=IMG, projector_hidden_act="gelu", vision_feature_layer=-2,
               vision_feature_select_strategy="default", multimodal_projector_bias=True, tie_word_embeddings=False,
               pad_token_id=PAD)
    if variant:  # exercise the other code paths: exact gelu, CLS kept, last layer, no bias, tied head, MHA, big theta
        v.update(hidden_act="gelu")
        t.update(tie_word_embeddings=True, num_key_value_heads=4, num_hidden_layers=2, rope_theta=500000.0)
        top.update(vision_feature_select_strategy="full", vision_feature_layer=-1, multimodal_projector_bias=False,
                   tie_word_embeddings=True)
    return LlavaConfig(vision_config=CLIPVisionConfig(**v), text_config=LlamaConfig(**t), **top)


def redraw(model, seed):
    """The transformers init (std 0.02) gives near-zero activations: every layer is almost the identity and a wrong
    layer could still pass a tolerance test. Re-draws everything at std 0.2 so activations are O(1) and each weight
    matters; norm weights around 1 and small biases keep the network well conditioned. Tied parameters (variant:
    lm_head == embed_tokens) are drawn once. Also used by make_llava_parts.py."""
    g = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                noise = torch.randn(p.shape, generator=g)
                p.copy_(1 + 0.1 * noise if (is_norm and name == "weight") else (0.1 if name == "bias" else 0.2) * noise)
    return model


def build_model(cfg, seed):
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    return redraw(model, seed)


def layout_of(keys):
    text = "newer" if any(k.startswith("model.language_model.") for k in keys) else "older"
    vm = any(".vision_tower.vision_model." in "." + k for k in keys)
    return f"{text} ({'with' if vm else 'without'} vision_tower.vision_model.)"


def to_other_layout(k):
    """older (as transformers 5.23 saves: no vision_model.) -> newer hub layout (with vision_model.), or back."""
    if k.startswith("language_model.lm_head."):
        return "lm_head." + k[len("language_model.lm_head."):]
    if k.startswith("language_model.model."):
        return "model.language_model." + k[len("language_model.model."):]
    if k.startswith("vision_tower.vision_model."):
        return "model." + k
    if k.startswith("vision_tower."):
        return "model.vision_tower.vision_model." + k[len("vision_tower."):]
    if k.startswith("multi_modal_projector."):
        return "model." + k
    if k.startswith("lm_head."):
        return "language_model." + k
    if k.startswith("model.language_model."):
        return "language_model.model." + k[len("model.language_model."):]
    assert k.startswith("model."), k
    return k[len("model."):]


def to_hub_older(k):
    """as transformers 5.23 saves -> the classic llava-hf layout (language_model.model., vision_tower.vision_model.)."""
    if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + k[len("vision_tower."):]
    return k


def make_inputs(n_feat, seed, left):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n_pre, n_post in [(4, 6), (2, 3)]:  # row 0 is 5 tokens longer than row 1
        pre, post = torch.randint(3, IMG, (n_pre,), generator=g), torch.randint(3, IMG, (n_post,), generator=g)
        rows.append(torch.cat([torch.tensor([BOS]), pre, torch.full((n_feat,), IMG), post]))
    T = max(len(r) for r in rows)
    ids, mask = torch.full((2, T), PAD, dtype=torch.long), torch.zeros(2, T, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, PAD_POSITION_FILL)
    pix = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(seed + 1))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pix, "position_ids": pos}


@torch.no_grad()
def reference(model, inp):
    cfg = model.config
    vt = model.model.vision_tower
    # CLIP hidden_states: [0] = input of encoder layer 0, i.e. AFTER embeddings + pre_layrnorm; [i] = output of layer
    # i-1; the last one is NOT post_layernorm'ed (CLIP uses tie_last_hidden_states=False; LLaVA never uses post_layernorm).
    vhs = vt(inp["pixel_values"], output_hidden_states=True).hidden_states
    sel = vhs[cfg.vision_feature_layer]
    if cfg.vision_feature_select_strategy == "default":
        sel = sel[:, 1:]  # drop CLS
    image_features = model.model.multi_modal_projector(sel).reshape(-1, cfg.text_config.hidden_size)
    api = torch.cat(list(model.model.get_image_features(pixel_values=inp["pixel_values"]).pooler_output))
    assert torch.equal(api, image_features), "get_image_features disagrees with the manual tower + projector"
    out = model(**inp, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    # Llama hidden_states: [0] = inputs_embeds after the image features were scattered in, [i] = output of decoder
    # layer i-1, and the LAST one is AFTER the final RMSNorm (capture_outputs replaces it with last_hidden_state).
    assert len(hs) == cfg.text_config.num_hidden_layers + 1 and len(vhs) == cfg.vision_config.num_hidden_layers + 1
    assert torch.equal(model.lm_head(hs[-1]), out.logits), "last hidden state is expected to be normed"
    is_img = inp["input_ids"] == IMG
    assert torch.equal(hs[0][is_img], image_features), "scattered features differ from image_features"
    assert torch.equal(hs[0][~is_img], model.model.language_model.embed_tokens(inp["input_ids"][~is_img]))
    res = {"logits": out.logits, "image_features": image_features, "vision_features": sel}
    res.update({f"vision_hidden_states.{i}": h for i, h in enumerate(vhs)})
    res.update({f"hidden_states.{i}": h for i, h in enumerate(hs)})
    return {k: v.clone() for k, v in res.items()}  # clone: "full" + layer -1 aliases a hidden state


def generate(model, ids, mask, pix):
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pix, max_new_tokens=8, min_new_tokens=0,
                         do_sample=False, num_beams=1, pad_token_id=PAD, eos_token_id=EOS)
    return out[:, ids.shape[1]:].contiguous()


def write_references(folder, cfg_top, seed):
    model = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    # Eager = the plain math (additive finfo.min mask, fp32 softmax). sdpa (the default) is checked against it below
    # on non-pad positions only: a left-pad query row has every key masked, and there eager averages V over all keys
    # while torch sdpa returns zeros, so outputs at attention_mask == 0 are implementation-defined: never compare them.
    sdpa = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa").eval()
    for m in (model, sdpa):  # no surprises from a generation_config.json: plain greedy, nothing else
        m.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, do_sample=False,
                                               num_beams=1, max_new_tokens=8, min_new_tokens=0, use_cache=True)
    n_feat = (cfg_top.vision_config.image_size // cfg_top.vision_config.patch_size) ** 2 + (
        cfg_top.vision_feature_select_strategy == "full")
    written = {}
    for side in ("left", "right"):
        inp = make_inputs(n_feat, seed, left=side == "left")
        exp = reference(model, inp)
        with torch.no_grad():
            valid = inp["attention_mask"].bool()
            d = (sdpa(**inp).logits - exp["logits"])[valid].abs().max().item()
        assert d < 1e-4, f"sdpa and eager disagree on non-pad positions by {d}"
        for name, t in (("inputs", inp), ("expected", exp)):
            save_file(t, f"{folder}/{name}_{side}.safetensors", metadata={"format": "pt"})
            written[f"{name}_{side}.safetensors"] = {k: list(v.shape) for k, v in t.items()}
    # greedy generation: the left-padded batch, then row 0 alone without padding
    for attempt in range(20):
        inp = make_inputs(n_feat, seed + 100 * attempt, left=True)
        gen = {k: inp[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        gen["generated"] = generate(model, gen["input_ids"], gen["attention_mask"], gen["pixel_values"])
        keep = inp["attention_mask"][0].bool()  # row 0 is the longest row: it has no padding
        gen["input_ids_single"] = inp["input_ids"][:1, keep].contiguous()
        gen["attention_mask_single"] = inp["attention_mask"][:1, keep].contiguous()
        gen["pixel_values_single"] = inp["pixel_values"][:1].clone()
        gen["generated_single"] = generate(model, gen["input_ids_single"], gen["attention_mask_single"],
                                           gen["pixel_values_single"])
        if (gen["generated"][:, 0] != EOS).all() and gen["generated_single"][0, 0] != EOS:
            break
        print(f"  generation seed attempt {attempt} stopped on eos at once, trying another prompt")
    assert torch.equal(gen["generated_single"][0], gen["generated"][0]), "batched row 0 != single-prompt generation"
    assert torch.equal(generate(sdpa, gen["input_ids"], gen["attention_mask"], gen["pixel_values"]), gen["generated"])
    print(f"  generated (left batch): {gen['generated'].tolist()}  single: {gen['generated_single'].tolist()}")
    save_file(gen, f"{folder}/generate.safetensors", metadata={"format": "pt"})
    written["generate.safetensors"] = {k: list(v.shape) for k, v in gen.items()}
    return n_feat, written


def save_model(cfg, folder, seed, **kw):
    model = build_model(cfg, seed)
    model.save_pretrained(folder, safe_serialization=True, **kw)
    return model


def weight_keys(folder):
    idx = f"{folder}/model.safetensors.index.json"
    if os.path.exists(idx):
        return sorted(json.load(open(idx))["weight_map"])
    return sorted(load_file(f"{folder}/model.safetensors"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    out = ap.parse_args().out
    names = ("tiny_llava", "tiny_llava_other_layout", "tiny_llava_variant", "tiny_llava_hub_older")
    for n in names:  # idempotent: only our own folders are replaced
        shutil.rmtree(os.path.join(out, n), ignore_errors=True)
    base, other, var, hub_older = (os.path.join(out, n) for n in names)

    cfg = make_config(variant=False)
    save_model(cfg, base, seed=1234)
    layout = layout_of(weight_keys(base))
    print(f"save_pretrained wrote the {layout} layout")
    # the same weights under the other layout's names; the newer side gets the hub's vision_tower.vision_model. form
    # ... and in the classic hub layout (older names with vision_tower.vision_model.), so all three are tested
    renamed = {other: to_other_layout, hub_older: to_hub_older}
    for folder, rename in renamed.items():
        os.makedirs(folder)
        shutil.copy(f"{base}/config.json", folder)
        save_file({rename(k): v for k, v in load_file(f"{base}/model.safetensors").items()},
                  f"{folder}/model.safetensors", metadata={"format": "pt"})
    other_layout, hub_older_layout = layout_of(weight_keys(other)), layout_of(weight_keys(hub_older))
    a = LlavaForConditionalGeneration.from_pretrained(base)
    inp = make_inputs(16, 7, left=True)
    for folder in renamed:
        b = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
        assert not any(b[1].values()), f"loading the renamed folder {folder} reported {b[1]}"
        with torch.no_grad():
            assert torch.equal(a.eval()(**inp).logits, b[0].eval()(**inp).logits), f"{folder} gives other logits"
    print(f"transformers loads the {other_layout} and {hub_older_layout} layouts too, same logits")

    cfg_v = make_config(variant=True)
    save_model(cfg_v, var, seed=4321, max_shard_size="64KB")  # tiny shards, so that the index + shards path is tested
    index = json.load(open(f"{var}/model.safetensors.index.json"))
    n_shards = len(set(index["weight_map"].values()))
    assert n_shards >= 2 and not os.path.exists(f"{var}/model.safetensors")
    saved_rope = json.load(open(f"{var}/config.json"))["text_config"]["rope_parameters"]["rope_theta"]
    assert saved_rope == 500000.0, saved_rope  # 5.x writes rope_theta inside text_config.rope_parameters

    for folder, c, seed, lay in ((base, cfg, 11, layout), (var, cfg_v, 22, layout_of(weight_keys(var)))):
        print(f"{os.path.basename(folder)}:")
        n_feat, written = write_references(folder, c, seed)
        info = {"transformers": transformers.__version__, "torch": torch.__version__, "layout": lay,
                "n_features_per_image": n_feat, "position_ids_pad_fill": PAD_POSITION_FILL,
                "attn_implementation": "eager (sdpa checked to agree on non-pad positions)",
                "hidden_states_last_is_normed": True, "compare_only": "positions with attention_mask == 1", "vision_hidden_states_0": "after pre_layrnorm",
                "files": written}
        json.dump(info, open(f"{folder}/reference_info.json", "w"), indent=1, sort_keys=True)

    print(f"wrote {out}: tiny_llava (layout {layout}), tiny_llava_other_layout (layout {other_layout}), "
          f"tiny_llava_hub_older (layout {hub_older_layout}), tiny_llava_variant (sharded, {n_shards} shards)")


if __name__ == "__main__":
    sys.exit(main())
