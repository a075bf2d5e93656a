#!/usr/bin/env python3
"""Reference LoRA adapters written (mode 1) or read (mode 2) by Hugging Face PEFT, on the tiny LLaVA.

Mode 1, fixtures (after make_tiny_llava.py --out DIR):
    .venv/bin/python tests/reference/make_peft_adapter.py --model DIR/tiny_llava --out DIR/peft
  writes DIR/peft/{lora,rslora}/ (adapter_model.safetensors, adapter_config.json as save_pretrained writes them, and
  expected_left.safetensors: `logits` with the adapter, `base_logits` without) and DIR/peft/peft_info.json.
Mode 2, check an adapter written by another tool:
    .venv/bin/python tests/reference/make_peft_adapter.py --model DIR/tiny_llava --check-adapter ADAPTER_DIR \
        --inputs DIR/tiny_llava/inputs_left.safetensors --out LOGITS.safetensors
  loads it with PeftModel.from_pretrained, exits non-zero on missing / unexpected keys or unless every tensor of the
  file was loaded and every LoRA parameter came from the file (--strict-names: and the names are exactly those PEFT
  saves), and writes `logits`.
Deterministic (fixed seeds, CPU, float32, eager attention), offline.
"""
import argparse, json, os, shutil, sys, tempfile, warnings

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the hub
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

transformers.logging.set_verbosity_error()
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
# transformers 5.23 deprecation noise that PEFT triggers on every get_peft_model / from_pretrained
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")

# Only the language model's projections: the CLIP tower also has self_attn.{q,k,v}_proj, which a plain list
# ["q_proj", ...] would match too. PEFT applies a str target_modules with re.fullmatch to the module name
# (transformers 5.x: model.language_model.layers.N...; 4.x: language_model.model.layers.N..., hence (model\.)?).
LM_ALL = r".*language_model\.(model\.)?layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
ADAPTERS = {
    # name: (seed, LoraConfig kwargs, expected number of wrapped modules)
    "lora": (101, dict(r=4, lora_alpha=8, target_modules=LM_ALL), 3 * 7),
    # peft 0.21.2 refuses layers_to_transform with a str target_modules ("`layers_to_transform` cannot be used when
    # `target_modules` is a str"), so this one uses the list form (suffix match) and keeps the vision tower's layers
    # 0 and 2 out with exclude_modules (a str there is also re.fullmatch'ed against the module name).
    "rslora": (202, dict(r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "down_proj"],
                         layers_to_transform=[0, 2], exclude_modules=r".*vision_tower.*"), 2 * 2),
}

NOTES = {  # what peft 0.21.2 does (read in peft/tuners/lora/layer.py, utils/save_and_load.py, tuners/tuners_utils.py)
    "forward": "y = base(x) + lora_B(lora_A(dropout(x))) * scaling; dropout is nn.Dropout(lora_dropout) on the LoRA "
               "branch input only (nn.Identity when 0), inactive in eval()",
    "scaling": "lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora",
    "merge": "W += scaling * (B @ A)",
    "keys": "saved without the adapter name ('default'); on load PEFT re-inserts it and ignores unexpected keys "
            "silently (load_state_dict(strict=False)), only missing keys give a warning",
    "target_modules": "str: re.fullmatch on the module name; list: exact name or name ends with '.' + entry",
    "layers_to_transform": "only with a list target_modules (a str raises ValueError); the layer index is the first "
                           "number after a dotted name (or after layers_pattern), so it matches the vision tower too",
}


def load_base(model_dir):
    return LlavaForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager").eval()


@torch.no_grad()
def logits_of(model, inp):
    # exactly as make_tiny_llava.py: input_ids, attention_mask, pixel_values and explicit position_ids
    return model(**inp, use_cache=False).logits.clone()


def lora_params(model):
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def apply_adapter(model_dir, adapter_dir, strict_names=False):
    """PeftModel.from_pretrained, made strict. PEFT only *warns* about missing keys and says nothing at all about
    unexpected ones (load_state_dict(strict=False)): this also fails on PEFT's missing/unexpected keys and checks by
    value that every file tensor landed in a LoRA parameter and every LoRA parameter came from the file.
    Returns the model and whether the file's names are exactly those PEFT itself saves."""
    errors = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PeftModel.from_pretrained(load_base(model_dir), adapter_dir).eval()
    for w in caught:
        msg = str(w.message)
        print(f"  peft warning: {msg[:300]}")
        if "adapter keys" in msg:  # "Found missing adapter keys while loading the checkpoint: [...]"
            errors.append(f"PEFT warned: {msg[:300]}")
    # PEFT's own view of the keys: load the same file again through set_peft_model_state_dict, which returns the
    # load_state_dict(strict=False) result after PEFT's key conversions (from_pretrained throws it away)
    again = set_peft_model_state_dict(model, load_peft_weights(adapter_dir, device="cpu"))
    errors += [f"PEFT: unexpected key {k}" for k in again.unexpected_keys]
    errors += [f"PEFT: missing key {k}" for k in again.missing_keys if ".lora_" in k]
    in_file = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = lora_params(model)
    if len(in_file) != len(params):
        errors.append(f"the file has {len(in_file)} tensors, the model {len(params)} LoRA parameters")
    loaded = set()  # by value too (A/B are random in our fixtures; an unloaded B would still be PEFT's zeros)
    for fk, ft in in_file.items():
        hits = {n for n, p in params.items() if p.shape == ft.shape and torch.equal(p.detach(), ft.to(p.dtype))}
        if not hits:
            errors.append(f"file tensor {fk} {tuple(ft.shape)} is in no LoRA parameter of the model")
        loaded |= hits
    errors += [f"LoRA parameter {n} equals no tensor of the file" for n in sorted(set(params) - loaded)]
    # the names PEFT would save: adapter name removed, e.g. ...q_proj.lora_A.default.weight -> ...q_proj.lora_A.weight
    names = {n.replace(".default.", ".") for n in params}
    same_names = names == set(in_file)
    if not same_names and strict_names:
        errors.append(f"names differ from those PEFT saves: {sorted(set(in_file) - names)[:3]} (PEFT: "
                      f"{sorted(names - set(in_file))[:3]})")
    elif not same_names and not errors:
        print(f"  note: loaded, but the file's names differ from those PEFT saves, e.g. "
              f"{sorted(set(in_file) - names)[:1]} (PEFT: {sorted(names - set(in_file))[:1]})")
    if errors:
        raise SystemExit(f"adapter {adapter_dir} did not load cleanly:\n  " + "\n  ".join(errors))
    return model, same_names


def make_adapter(model_dir, out_dir, name, inp, base_logits):
    seed, kw, n_modules = ADAPTERS[name]
    cfg = LoraConfig(lora_dropout=0.0, bias="none", use_rslora=kw.pop("use_rslora", False), task_type="CAUSAL_LM",
                     **kw)
    model = get_peft_model(load_base(model_dir), cfg).eval()
    wrapped = sorted({n.split(".lora_")[0] for n in lora_params(model)})
    assert len(wrapped) == n_modules and not any("vision" in w for w in wrapped), wrapped
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # PEFT initialises B to 0 (a no-op adapter): draw A and B at random instead
        for n, p in sorted(lora_params(model).items()):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    folder = os.path.join(out_dir, name)
    model.save_pretrained(folder)  # adapter_model.safetensors + adapter_config.json (and a README.md model card)
    logits = logits_of(model, inp)
    d = (logits - base_logits)[inp["attention_mask"].bool()].abs().max().item()
    scaling = model.base_model.model.model.language_model.layers[0].self_attn.q_proj.scaling["default"]
    print(f"{name}: {len(wrapped)} modules, scaling {scaling:.6f}, max |logits - base_logits| = {d:.4f} (non-pad)")
    assert d > 1e-2, "the adapter hardly changes the logits"
    save_file({"logits": logits, "base_logits": base_logits}, os.path.join(folder, "expected_left.safetensors"),
              metadata={"format": "pt"})
    # sanity checks of the reference: the merged weights give the same logits, and reloading is exact
    merged = logits_of(model.merge_and_unload(), inp)
    dm = (merged - logits).abs().max().item()
    assert dm < 1e-4, f"merge_and_unload differs by {dm}"
    reloaded, _ = apply_adapter(model_dir, folder, strict_names=True)
    assert torch.equal(logits_of(reloaded, inp), logits), "reloading the saved adapter changes the logits"
    tensors = load_file(os.path.join(folder, "adapter_model.safetensors"))
    config = json.load(open(os.path.join(folder, "adapter_config.json")))
    print(f"  {len(tensors)} tensors, e.g. {sorted(tensors)[:2]}\n  adapter_config.json: {json.dumps(config)}")
    return {"tensors": {k: list(v.shape) for k, v in sorted(tensors.items())}, "adapter_config": config,
            "scaling": scaling, "merge_and_unload_max_abs_diff": dm, "max_abs_logit_change": d}


def compat_checks(model_dir, lora_dir, inp, want):
    """Can PEFT load what another tool may write? Variants of the lora/ adapter (other key names, hand-written small
    configs) are loaded through apply_adapter (strict) and must give the same logits."""
    tensors = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    full = json.load(open(os.path.join(lora_dir, "adapter_config.json")))
    rename = lambda old, new: {k.replace(old, new, 1): v for k, v in tensors.items()}
    pick = lambda *keys: {k: full[k] for k in keys}
    variants = {  # label: (tensors, adapter_config.json)
        "keys_older_module_path": (rename("base_model.model.model.language_model.",  # transformers 4.x module path
                                          "base_model.model.language_model.model."), full),
        "keys_without_base_model_model_prefix": (rename("base_model.model.", ""), full),
        "config_9_fields": (tensors, pick("peft_type", "r", "lora_alpha", "target_modules", "use_rslora", "bias",
                                          "task_type", "base_model_name_or_path", "lora_dropout")),
        "config_4_fields": (tensors, pick("peft_type", "r", "lora_alpha", "target_modules")),
    }
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (t, cfg) in variants.items():
            folder = os.path.join(tmp, label)
            os.makedirs(folder)
            save_file(t, os.path.join(folder, "adapter_model.safetensors"))
            json.dump(cfg, open(os.path.join(folder, "adapter_config.json"), "w"), indent=1)
            try:
                model, same_names = apply_adapter(model_dir, folder)
                res[label] = {"loads": True, "same_logits": torch.equal(logits_of(model, inp), want),
                              "file_names_as_peft_saves": same_names}
            except SystemExit as e:
                res[label] = {"loads": False, "error": str(e)[:400]}
            res[label]["config_fields"] = "as saved" if cfg is full else sorted(cfg)
            print(f"compat {label}: {res[label]}")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="DIR/tiny_llava")
    ap.add_argument("--out", required=True, help="mode 1: output folder; mode 2: the logits .safetensors file")
    ap.add_argument("--check-adapter", help="mode 2: an adapter folder written by another tool")
    ap.add_argument("--inputs", help="mode 2: inputs .safetensors (default MODEL/inputs_left.safetensors)")
    ap.add_argument("--strict-names", action="store_true",
                    help="mode 2: also fail unless the tensor names are exactly those PEFT saves (no PEFT renaming)")
    a = ap.parse_args()
    inp = load_file(a.inputs or os.path.join(a.model, "inputs_left.safetensors"))

    if a.check_adapter:  # mode 2
        model, same_names = apply_adapter(a.model, a.check_adapter, a.strict_names)
        save_file({"logits": logits_of(model, inp)}, a.out, metadata={"format": "pt"})
        how = "names as PEFT saves them" if same_names else "other names, mapped by PEFT"
        print(f"adapter {a.check_adapter} loaded cleanly ({how}); wrote {a.out}")
        return 0

    for n in ADAPTERS:  # idempotent: only our own folders are replaced
        shutil.rmtree(os.path.join(a.out, n), ignore_errors=True)
    os.makedirs(a.out, exist_ok=True)
    base_logits = logits_of(load_base(a.model), inp)
    ref = os.path.join(a.model, "expected_left.safetensors")
    if a.inputs is None and os.path.exists(ref):
        assert torch.equal(base_logits, load_file(ref)["logits"]), "base logits differ from make_tiny_llava's"
    info = {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "module_path_form": "base_model.model.model.language_model.layers.N.{self_attn,mlp}.X_proj.lora_{A,B}"
                                ".weight (adapter name 'default' stripped; lora_A r x in, lora_B out x r)",
            "adapters": {}}
    for name in ADAPTERS:
        info["adapters"][name] = make_adapter(a.model, a.out, name, inp, base_logits)
    want = load_file(os.path.join(a.out, "lora", "expected_left.safetensors"))["logits"]
    info["compat"] = compat_checks(a.model, os.path.join(a.out, "lora"), inp, want)
    info["notes"] = NOTES
    json.dump(info, open(os.path.join(a.out, "peft_info.json"), "w"), indent=1, sort_keys=True)
    print(f"wrote {a.out}: lora/, rslora/, peft_info.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
