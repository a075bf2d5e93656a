#!/usr/bin/env python3
"""Build byte-level BPE tokenizer.json files with the `tokenizers` library, and write the library's ids and
decodes, for mole's ByteLevelBpe (language/bpe_tokenizer.h; compared in tests/language/test_bpe_tokenizer.cpp).

    .venv/bin/python tests/reference/make_bpe_reference.py --out DIR

Five tokenizers, each trained with BpeTrainer on the small multilingual corpus below (so merges exist across
scripts), written to DIR/<name>/tokenizer.json (replacing DIR):
  llama3        Split(Llama-3 regex, Isolated) + ByteLevel(use_regex=False), ignore_merges (with a few whole-word
                vocab entries that the merges cannot build, so that it matters), Sequence[ByteLevel,
                TemplateProcessing "<|begin_of_text|> $A"], special added tokens after the vocabulary
                (<|begin_of_text|>, <|eot_id|>, <|start_header_id|>, <|end_header_id|>, <image>, ...)
  qwen2         NFC normalizer + Split(Qwen2 regex) + ByteLevel(use_regex=False), ByteLevel post-processor,
                <|endoftext|>, <|im_start|>, <|im_end|>, and two added tokens whose content is not NFC
                (one normalized, matched on NFC text; one not normalized, matched on the raw text)
  nemo          Split(Mistral-Nemo's regex: case classes \p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}) + ByteLevel(use_regex=False),
                unk_token and byte_fallback set (they never act: every byte is in the vocabulary), specials inside
                the vocabulary (<unk>, <s>, </s>, [INST], [/INST], [IMG]), TemplateProcessing "<s> $A"
  gpt2          ByteLevel(add_prefix_space=False, use_regex=True) alone (GPT-2's own regex), no post-processor,
                <|endoftext|> inside the model vocabulary (id 0) and added as special
  gpt2_prefix   ByteLevel(add_prefix_space=True), merges saved in the legacy "a b" string form, no decoder
                (decode joins the tokens with spaces), TemplateProcessing "$A <|endoftext|>", added tokens
                with lstrip / rstrip (as RoBERTa's <mask>), a normalized non-special added token

DIR/<name>/expected.json, from the library's Tokenizer.from_file of that very file:
  {"tokenizers": VERSION, "vocab_size": get_vocab_size(with_added_tokens=True),
   "texts": [str],
   "ids": [encode(text, add_special_tokens=False).ids], "ids_with_special": [encode(text, True).ids],
   "pre_tokens": [pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)) pieces]   the Split regexes'
              pieces (PCRE2 here, Oniguruma there) seen directly, not only through the ids,
   "decode": [decode(ids_with_special, skip_special_tokens=False)], "decode_skip_special": [... True],
   "partial": [{"ids", "decode", "decode_skip_special"}]   id lists cut inside multi-byte characters and
              with unknown ids, for the decoder's invalid-UTF-8 handling,
   "id_to_token": [id_to_token(i) for every id], "token_to_id": [token_to_id(id_to_token(i)), -1 for None],
   "special_ids": [ids of added tokens with special=True],
   "post_processor_bos": the id TemplateProcessing puts first, or -1}
The texts: a curated list (contractions, scripts, digits, whitespace runs, emoji, combining characters,
added tokens inside text, unseen characters, the empty string) and 400 random mixtures of such pieces (fixed
seed). Offline: nothing but the `tokenizers` package is used.
"""
import argparse, json, os, random, shutil

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
NEMO_REGEX = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
              r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs.",
    "I'm sure they'll say it's fine, but we've seen what you'd do. Don't worry, we're here.",
    "There are 1234567 stars, 3.14159 radians and 2026-12-07 is a date. Call 555-0100 at 10:30.",
    "What colour is the star? The star is green. How many rings are there? There are 12 rings.",
    "def encode(text):\n    return [vocab[t] for t in text.split()]\n\nif __name__ == '__main__':\n\tmain()\n",
    "Привет, как дела? Сегодня хорошая погода, и мы идём гулять в парк.",
    "Καλημέρα σας. Η Ελλάδα είναι μια όμορφη χώρα με πολλά νησιά.",
    "مرحبا بكم في عالم البرمجة. اللغة العربية جميلة.",
    "שלום עולם. אני אוהב ללמוד שפות חדשות.",
    "नमस्ते दुनिया। मुझे नई भाषाएँ सीखना पसंद है।",
    "你好，世界。我喜欢学习新的语言。今天天气很好。",
    "こんにちは世界。私は新しい言語を学ぶのが好きです。",
    "안녕하세요 세계. 저는 새로운 언어를 배우는 것을 좋아합니다.",
    "สวัสดีชาวโลก ฉันชอบเรียนภาษาใหม่",
    "Café, naïve, résumé, façade, jalapeño, Zürich, São Paulo, Ærøskøbing.",
    "Emoji: 🙂 😀 👍🏽 👩‍💻 🇫🇷 🇯🇵 ❤️ 🎉 — and so on…",
    "USER: <image>\nDescribe the picture. ASSISTANT: A red circle next to a blue square.",
    "    indented line\n\n\nthree newlines\r\nwindows line\ttab\t\ttwo tabs   trailing   ",
]
# Whole words added to the llama3 vocabulary without merges: with ignore_merges each is one id when it is a
# whole pre-token; without, BPE spells it out from the merges.
IGNORE_MERGES_WORDS = [" quixotic", " zyzzyva", " Шифр", "ﬁ"]

TEXTS = [
    "",
    " ",
    "Hello world",
    "I'm here, they'LL come, we'Re done, it'S fine, you'D see, I'VE got it, don'T.",
    "it'ſ 'S 'LL''s",
    "1234567 3.14159 2026-12-07 000 1 12 123 1234 12345 ١٢٣٤ ½ ②",
    "  leading spaces", "trailing spaces   ", "\t\ttabs\tinside\t", "a\n\n\nb", "line\r\nline\r\n", "\n", "\r\n\r\n",
    "   \n   \n", "x  \n  y", "word\u00a0nbsp\u3000ideographic\u2028sep",
    "Привет, мир! Καλημέρα! مرحبا! שלום! नमस्ते! 你好，世界！ こんにちは！ 안녕하세요! สวัสดี",
    "👍🏽👩‍💻🇫🇷🇯🇵❤️1️⃣ 🏳️‍🌈 👨‍👩‍👧‍👦 🤷🏿‍♀️",
    "Cafe\u0301 Café e\u0301\u0301 a\u0308\u0323 \u1100\u1161\u11a8 Å Å",
    "unseen: ꙮ ሰላም Ꮳ 𐀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x07\x1b \ufeff\u200b\ufffd \U0010fffd \U00031350\U00011f04",
    "edges of \\s: a\u0085b a\u180eb a\x1c\x1d\x1e\x1fb a\u2029b a\u205f\u3000b a\u1680b \u2028\n",
    " quixotic zyzzyva Шифр ﬁ quixotically",
    "USER: <image>\nWhat is it? ASSISTANT: A cat.",
    "<image><image>\n<image>",
    "a" * 300 + " " + "9" * 40 + " " + "!" * 50 + " " * 70 + "\n" * 5,
    " ".join(CORPUS),
]

WORDS = ["the", "The", "quick", "Hello", "world", "don't", "I'm", "they'LL", "Привет", "мир", "Ελλάδα", "مرحبا",
         "שלום", "नमस्ते", "你好", "世界", "こんにちは", "안녕", "สวัสดี", "café", "Cafe\u0301", "naïve", "Zürich",
         "quixotic", "Шифр", "ﬁ", "e\u0301", "\u1100\u1161", "ꙮ", "𝔘𝔫𝔦", "x", "ABC", "camelCase", "snake_case"]
DIGITS = "0123456789١٢٣٤٥"
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n\n", " \n", "\u00a0", "\u3000", "\r", "\x0b", "\x0c", "\u2028",
          "\u0085", "\u180e", "\x1c"]
PUNCT = list(".,;:!?()[]{}\"'-–—…/\\@#$%^&*_+=<>|~`") + ["'s", "'t", "'re", "'ll", "'D", "...", "?!", "://"]
EMOJI = ["🙂", "😀", "👍🏽", "👩‍💻", "🇫🇷", "🇯🇵", "❤️", "🎉", "1️⃣", "🏳️‍🌈", "👨‍👩‍👧‍👦", "🤷🏿‍♀️", "\u200d", "\ufe0f"]
COMBINING = ["\u0301", "\u0308", "\u0323", "\u0327", "\u0303\u0301", "\u1161", "\u11a8"]


def fuzz_texts(specials, n, seed):
    """Random mixtures of words, digit runs, whitespace runs, punctuation, emoji, combining marks, specials."""
    rng = random.Random(seed)
    kinds = [lambda: rng.choice(WORDS),
             lambda: "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 9))),
             lambda: "".join(rng.choice(SPACES) for _ in range(rng.randint(1, 3))),
             lambda: rng.choice(PUNCT),
             lambda: rng.choice(EMOJI),
             lambda: rng.choice(COMBINING),
             lambda: rng.choice(specials) if specials else " "]
    weights = [6, 2, 4, 3, 1, 1, 1]
    out = []
    for _ in range(n):
        pieces = [rng.choices(kinds, weights)[0]() for _ in range(rng.randint(1, 24))]
        out.append("".join(pieces))
    return out


def train(name, pre_tokenizer, normalizer, vocab_size, in_vocab_specials=()):
    """BpeTrainer on the corpus with the final pre-tokenizer; returns (vocab, merges) of the trained model."""
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(in_vocab_specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert len(merges) > 200, f"{name}: too few merges ({len(merges)})"
    return model["vocab"], merges


def byte_level(text):
    """GPT-2's bytes_to_unicode applied to text (what ByteLevel makes of a pre-token)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, map(chr, cs)))
    return "".join(table[b] for b in text.encode("utf-8"))


def build_llama3():
    split = pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False)
    pre = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                                   use_regex=False)])
    vocab, merges = train("llama3", pre, None, 2000)
    for word in IGNORE_MERGES_WORDS:
        vocab.setdefault(byte_level(word), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<image>", "<|reserved_special_token_1|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    texts = ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is this?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>",
             "x<|eot_id|>y", "<|eot_id|", "<|eot_id|><|eot_id|>", " <|end_of_text|> ", "<|reserved_special_token_1|>1"]
    return tok, specials, texts, bos


def build_qwen2():
    split = pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False)
    pre = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                                                   use_regex=False)])
    vocab, merges = train("qwen2", pre, normalizers.NFC(), 1500)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    # Content that is not NFC: a normalized token matches the NFC text (either spelling), a not-normalized one
    # only its own raw spelling.
    tok.add_tokens([AddedToken("Cafe\u0301", special=False, normalized=True)])
    tok.add_special_tokens([AddedToken("<re\u0301sume\u0301>", special=True, normalized=False)])
    texts = ["<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
             "Café and Cafe\u0301 and CAFE\u0301 and Cafe", "<re\u0301sume\u0301> and <résumé>",
             "e<|im_end|>\u0301", "Cafe<|endoftext|>\u0301"]
    return tok, specials + ["Cafe\u0301", "<re\u0301sume\u0301>", "Café"], texts, -1


def build_nemo():
    split = pre_tokenizers.Split(Regex(NEMO_REGEX), behavior="isolated", invert=False)
    pre = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                                   use_regex=False)])
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]"]
    vocab, merges = train("nemo", pre, None, 1500, in_vocab_specials=specials)
    # unk_token and byte_fallback as Mistral's files set them: with every byte in the vocabulary neither acts.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1",
                                                       special_tokens=[("<s>", bos)])
    texts = ["<s>[INST]What is in [IMG]?[/INST]A CamelCase HTMLParser wordWORD Wörter ÉCOLE</s>", "path/to/file/\n"]
    return tok, specials, texts, bos


def build_gpt2(add_prefix_space):
    pre = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    vocab, merges = train("gpt2", pre, None, 1000, in_vocab_specials=["<|endoftext|>"])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=True)])
    specials = ["<|endoftext|>"]
    texts = ["first<|endoftext|>second", "<|endoftext|> after"]
    if not add_prefix_space:
        tok.decoder = decoders.ByteLevel()
        return tok, specials, texts, -1
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1",
                                                       special_tokens=[("<|endoftext|>", eos)])
    # RoBERTa's <mask> takes the spaces on its left; <sep> those on its right.
    tok.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True, normalized=False),
                            AddedToken("<sep>", special=True, rstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("hello world", special=False, normalized=True)])
    specials += ["<mask>", "<sep>", "hello world"]
    texts += ["The capital is   <mask>.", "<mask> first", "  <mask>", "a\u3000\t<mask>b", "<sep>  \n next",
              "x <sep>   <mask> y", "<mask><mask>  <sep><sep>z", "say hello world twice: hello world!",
              "hello  world", "<sep>"]
    return tok, specials, texts, -1


def partial_cases(ref, texts):
    """Id lists that cut multi-byte characters (and one with ids outside the vocabulary)."""
    cases = []
    n = ref.get_vocab_size(with_added_tokens=True)
    for text in texts:
        ids = ref.encode(text, add_special_tokens=False).ids
        if len(ids) < 2 or text.isascii():
            continue
        cases.append(ids[1:])
        cases.append(ids[:-1])
        cases.append(ids[::2])
    cases = cases[:60]
    cases.append([0, n + 5, 1, 10**6])
    return [{"ids": c, "decode": ref.decode(c, skip_special_tokens=False),
             "decode_skip_special": ref.decode(c, skip_special_tokens=True)} for c in cases]


def write(out_dir, name, tok, specials, own_texts, bos, legacy_merges=False):
    folder = os.path.join(out_dir, name)
    os.makedirs(folder)
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    if legacy_merges:  # the older "a b" form of merges, which the library still reads
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False, indent=2)
    ref = Tokenizer.from_file(path)  # exactly what mole reads
    texts = TEXTS + own_texts + fuzz_texts(specials, 400, seed=len(name))
    ids = [ref.encode(t, add_special_tokens=False).ids for t in texts]
    ids_special = [ref.encode(t, add_special_tokens=True).ids for t in texts]
    n = ref.get_vocab_size(with_added_tokens=True)
    added = ref.get_added_tokens_decoder()
    expected = {
        "tokenizers": tokenizers.__version__,
        "vocab_size": n,
        "texts": texts,
        "ids": ids,
        "ids_with_special": ids_special,
        "pre_tokens": [[p for p, _ in ref.pre_tokenizer.pre_tokenize_str(
            ref.normalizer.normalize_str(t) if ref.normalizer else t)] for t in texts],
        "decode": [ref.decode(x, skip_special_tokens=False) for x in ids_special],
        "decode_skip_special": [ref.decode(x, skip_special_tokens=True) for x in ids_special],
        "partial": partial_cases(ref, texts),
        "id_to_token": [ref.id_to_token(i) for i in range(n)],
        "token_to_id": [-1 if (i := ref.token_to_id(ref.id_to_token(k))) is None else i for k in range(n)],
        "special_ids": sorted(i for i, t in added.items() if t.special),
        "post_processor_bos": bos,
    }
    with open(os.path.join(folder, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=True)
    return ref, texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)

    tok, specials, texts, bos = build_llama3()
    ref, all_texts = write(args.out, "llama3", tok, specials, texts, bos)
    # ignore_merges must change some ids here, or the test would not see it.
    j = json.loads(ref.to_str())
    j["model"]["ignore_merges"] = False
    plain = Tokenizer.from_str(json.dumps(j))
    assert any(ref.encode(t).ids != plain.encode(t).ids for t in all_texts), "ignore_merges changes nothing"
    write(args.out, "qwen2", *build_qwen2())
    write(args.out, "nemo", *build_nemo())
    write(args.out, "gpt2", *build_gpt2(add_prefix_space=False))
    write(args.out, "gpt2_prefix", *build_gpt2(add_prefix_space=True), legacy_merges=True)


if __name__ == "__main__":
    main()
