#!/usr/bin/env python3
"""Encodes strings with transformers' Llama tokenizers loaded from a folder written by `mole train-tokenizer`
(or Tokenizer::train), for tests/language/test_tokenizer.cpp to compare with mole's ids.

    .venv/bin/python tests/reference/check_tokenizer.py --tokenizer DIR --strings IN.json --out OUT.json

IN.json: a JSON list of strings. OUT.json:
  {"transformers": VERSION, "vocab_size": len(tokenizer),
   "fast": [[ids], ...],   transformers.LlamaTokenizer (in transformers 5: the `tokenizers` backend converted
                           from tokenizer.model, legacy=True from tokenizer_config.json), BOS added
   "slow": [[ids], ...],   transformers' sentencepiece backend (SentencePieceBackend: transformers 4's slow
                           LlamaTokenizer algorithm, legacy=True: each piece between added tokens goes through
                           sentencepiece with its dummy prefix), BOS prepended by hand, as LlamaTokenizer does
   "decode_fast": [str, ...]   fast.decode(ids, skip_special_tokens=True)}
Needs the `sentencepiece` and `protobuf` packages (the conversion from tokenizer.model reads its protobuf).
Offline, deterministic.
"""
import argparse, json, os, sys

os.environ["HF_HUB_OFFLINE"] = "1"
import transformers
from transformers import LlamaTokenizer

transformers.logging.set_verbosity_error()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--strings", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)

    fast = LlamaTokenizer.from_pretrained(args.tokenizer)
    if not getattr(fast, "legacy", True):
        sys.exit("check_tokenizer: expected legacy=True from tokenizer_config.json")
    try:  # transformers 5
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend as Slow
    except ImportError:  # transformers 4: the slow class itself
        from transformers import LlamaTokenizer as Slow
    slow = Slow.from_pretrained(args.tokenizer, legacy=True)

    out = {
        "transformers": transformers.__version__,
        "vocab_size": len(fast),
        "fast": [fast.encode(s) for s in strings],
        "slow": [[fast.bos_token_id] + slow.encode(s, add_special_tokens=False) for s in strings],
        "decode_fast": [fast.decode(fast.encode(s), skip_special_tokens=True) for s in strings],
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
