#!/usr/bin/env python3
"""Write test images and LLaVA-1.5 reference pixel values for mole's image preprocessing (data/image.h).

    .venv/bin/python tests/reference/make_image_reference.py --out DIR

Writes into DIR (replacing it):
  *.jpg *.png *.webp *.bmp     test images of several sizes and modes, drawn with PIL from fixed random content
                               (smooth gradients, sharp black/white edges and noise, so that resampling and
                               clipping differences show)
  preprocessor_config.json     LLaVA-1.5's CLIP processor settings (size 336, crop 336, bicubic) as transformers
                               saves them; plus variants preprocessor_config_<variant>.json
  expected.safetensors         for every case:  <case> float32 (3, H, W) pixel_values,
                               resized/<case> uint8 (H, W, 3) after expand2square + resize (before crop, rescale
                               and normalise), and for every file decoded/<file> uint8 (H, W, 3) as
                               Image.open(file).convert("RGB") gives it
  manifest.json                the cases: {"case", "file", "config", "pad_to_square", "lossy"}

The pipeline is LLaVA-1.5's (llava/train/train.py LazySupervisedDataset.__getitem__ with image_aspect_ratio "pad"):
    image = Image.open(path).convert("RGB")
    image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    pixel_values = processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
with transformers' PIL-backed CLIP processor (CLIPImageProcessorPil: PIL Image.resize, numpy crop/rescale/normalise).
The "nopad" cases skip expand2square (image_aspect_ratio "square").
Deterministic (fixed seeds) and offline.
"""
import argparse, json, os, shutil, struct, zlib

os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
import transformers
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

transformers.logging.set_verbosity_error()

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def hf_config(size, crop, resample=3):
    # As llava-hf/llava-1.5-7b-hf's preprocessor_config.json (CLIPImageProcessor.save_pretrained format).
    return {"crop_size": {"height": crop, "width": crop}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "resample": resample,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": size}}


CONFIGS = {  # file name -> contents
    "preprocessor_config.json": hf_config(336, 336),
    # Older hub layout (openai/clip-vit-large-patch14-336): ints for size and crop_size, no rescale keys.
    "preprocessor_config_224.json": {"crop_size": 224, "do_center_crop": True, "do_normalize": True,
                                     "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
                                     "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "size": 224},
    "preprocessor_config_bilinear.json": hf_config(336, 336, resample=2),
    # Resize to 256 then crop 224: the crop really cuts (the defaults crop nothing after expand2square).
    "preprocessor_config_256_224.json": hf_config(256, 224),
    # Crop larger than the resized image: transformers' center_crop pads with zeros.
    "preprocessor_config_200_224.json": hf_config(200, 224),
}


def expand2square(pil_img, background_color):
    # llava/mm_utils.py expand2square, verbatim.
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def content(w, h, seed, channels=3):
    """uint8 (h, w, channels): smooth gradients and waves, a black and a white block with sharp edges (bicubic
    overshoots there, so PIL's clipping is exercised), and per-pixel noise."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, channels))
    for c in range(channels):
        fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi)
        out[..., c] = (255 * (0.5 * x / w + 0.3 * y / h) + 60 * np.sin(2 * np.pi * (fx * x / w + fy * y / h) + phase)
                       + rng.normal(0, 18, (h, w)))
    out[h // 5: h // 5 + max(2, h // 6), w // 7: w // 7 + max(2, w // 5)] = 0
    out[h // 2: h // 2 + max(2, h // 7), w // 2: w // 2 + max(2, w // 4)] = 255
    out[h - 3:, :] = 255 - out[h - 3:, :]  # a stripe at the edge: edge handling of the filter windows
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def png_rgb16(path, w, h, seed):
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    rng = np.random.RandomState(seed)
    data = (content(w, h, seed).astype(np.uint32) * 257 + rng.randint(0, 257, (h, w, 3))).astype(">u2")

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    raw = b"".join(b"\x00" + data[row].tobytes() for row in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_images(out):
    """The test images; returns their file names."""
    names = []

    def save(img, name, **kw):
        img.save(os.path.join(out, name), **kw)
        names.append(name)

    save(Image.fromarray(content(640, 480, 1)), "photo_640x480.jpg", quality=90)  # 4:2:0 chroma subsampling
    save(Image.fromarray(content(300, 500, 2)), "tall_300x500.png")
    save(Image.fromarray(content(337, 336, 3)), "odd_337x336.png")  # (w - h) // 2 == 0
    save(Image.fromarray(content(336, 335, 4)), "short_336x335.png")
    save(Image.fromarray(content(50, 80, 5)), "tiny_50x80.png")  # upscaled
    save(Image.fromarray(content(1200, 400, 6)), "wide_1200x400.png")  # shrunk by 3.6: wide filter windows
    save(Image.fromarray(content(200, 150, 7, 1)[..., 0], "L"), "gray_200x150.png")
    rgba = content(180, 240, 8, 4)
    rgba[..., 3] = np.where(np.arange(180)[None, :] < 60, 0, rgba[..., 3])  # fully transparent third
    save(Image.fromarray(rgba, "RGBA"), "rgba_180x240.png")
    save(Image.fromarray(content(64, 96, 9, 2), "LA"), "la_64x96.png")
    pal = Image.fromarray(content(160, 120, 10)).quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=0)
    save(pal, "palette_160x120.png", transparency=0)  # tRNS chunk: colour 0 transparent
    save(Image.fromarray(content(70, 50, 11, 1)[..., 0] > 127), "bilevel_70x50.png")  # mode "1", 1-bit PNG
    save(Image.fromarray(content(400, 300, 12)), "photo_400x300.webp", quality=80)  # lossy VP8
    save(Image.fromarray(content(210, 160, 13, 4), "RGBA"), "alpha_210x160.webp", lossless=True)  # VP8L
    save(Image.fromarray(content(120, 90, 14)), "bitmap_120x90.bmp")
    save(Image.fromarray(content(131, 97, 15, 1)[..., 0], "L"), "gray_131x97.jpg", quality=85)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display. PIL's open + convert ignores it, as LLaVA does.
    save(Image.fromarray(content(160, 120, 16)), "exif_rotated_160x120.jpg", quality=92, exif=exif)
    png_rgb16(os.path.join(out, "rgb16_96x64.png"), 96, 64, 17)
    names.append("rgb16_96x64.png")
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    for name, cfg in CONFIGS.items():
        with open(os.path.join(out, name), "w") as f:
            json.dump(cfg, f, indent=2)
    processors = {}
    for name in CONFIGS:
        tmp = os.path.join(out, "hf_" + name.replace(".json", ""))  # from_pretrained wants a folder
        os.makedirs(tmp)
        shutil.copy(os.path.join(out, name), os.path.join(tmp, "preprocessor_config.json"))
        proc = CLIPImageProcessorPil.from_pretrained(tmp)
        shutil.rmtree(tmp)
        assert proc.backend == "pil", proc.backend
        processors[name] = proc

    files = write_images(out)
    cases = [(f, f, "preprocessor_config.json", True) for f in files]
    for f in ("photo_640x480.jpg", "tall_300x500.png", "tiny_50x80.png", "wide_1200x400.png"):
        cases.append(("nopad/" + f, f, "preprocessor_config.json", False))
    cases.append(("size224/tall_300x500.png", "tall_300x500.png", "preprocessor_config_224.json", True))
    cases.append(("bilinear/photo_640x480.jpg", "photo_640x480.jpg", "preprocessor_config_bilinear.json", True))
    cases.append(("bilinear/tiny_50x80.png", "tiny_50x80.png", "preprocessor_config_bilinear.json", True))
    cases.append(("crop256_224/photo_640x480.jpg", "photo_640x480.jpg", "preprocessor_config_256_224.json", True))
    cases.append(("crop256_224/nopad/tall_300x500.png", "tall_300x500.png", "preprocessor_config_256_224.json",
                  False))
    cases.append(("crop200_224/nopad/wide_1200x400.png", "wide_1200x400.png", "preprocessor_config_200_224.json",
                  False))

    tensors, manifest = {}, []
    for f in files:
        tensors["decoded/" + f] = torch.from_numpy(np.array(Image.open(os.path.join(out, f)).convert("RGB")))
    for case, f, cfg, pad in cases:
        proc = processors[cfg]
        image = Image.open(os.path.join(out, f)).convert("RGB")
        if pad:
            image = expand2square(image, tuple(int(x * 255) for x in proc.image_mean))
        pixel_values = proc.preprocess(image, return_tensors="pt")["pixel_values"][0]
        resized = proc.preprocess(image, do_center_crop=False, do_rescale=False, do_normalize=False)
        resized = np.asarray(resized["pixel_values"][0])
        assert resized.dtype == np.uint8, resized.dtype
        tensors[case] = pixel_values.float().contiguous()
        tensors["resized/" + case] = torch.from_numpy(np.ascontiguousarray(resized.transpose(1, 2, 0)))
        lossy = f.endswith(".jpg") or f == "photo_400x300.webp"  # decoded pixels depend on the codec build
        manifest.append({"case": case, "file": f, "config": cfg, "pad_to_square": pad, "lossy": lossy})

    save_file(tensors, os.path.join(out, "expected.safetensors"),
              metadata={"transformers": transformers.__version__, "pillow": Image.__version__})
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump({"transformers": transformers.__version__, "pillow": Image.__version__, "cases": manifest}, fh,
                  indent=1)
    print(f"make_image_reference: {len(files)} images, {len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
