// A LLaMA-style sentencepiece tokenizer with Hugging Face's added tokens (<image>, <pad>), encoding text the
// way transformers' slow LlamaTokenizer does with legacy=True (what LLaVA-1.5 trains with), and a trainer
// that writes a folder both mole and transformers can load.
//
// Reference: transformers 4.x tokenization_llama.py (LlamaTokenizer, legacy=True) and tokenization_utils.py
// (PreTrainedTokenizer.tokenize: split on added tokens with a trie, then sentencepiece on each piece); in
// transformers 5 the same slow path is tokenization_utils_sentencepiece.py (SentencePieceBackend._tokenize).
//
// How text becomes ids (legacy=True):
//   1. The text is split on the added-token strings (<image>, <pad>, and the special pieces <s>, </s>, <unk>),
//      longest match first, left to right; each match is its single id.
//   2. Each remaining non-empty piece is encoded by sentencepiece on its own, so each one gets sentencepiece's
//      dummy prefix "▁": "</s>USER:" -> [2, ▁USER, :], "<image>\nWhat" -> [32000, ▁, <0x0A>, What].
//      That is the "legacy" behaviour (text right after a special token starts a new word); LLaVA-1.5's
//      tokenizer_image_token and preprocess_v1 rely on it.
//   3. add_bos puts bos_id() first (LlamaTokenizer's add_bos_token=True); eos is never added.
//
// Against transformers (tests/language/test_tokenizer.cpp [reference], on a folder written by train()):
//   - transformers 4's slow LlamaTokenizer / transformers 5's SentencePieceBackend, legacy=True: the same ids.
//   - transformers 5's LlamaTokenizer (the `tokenizers` backend converted from tokenizer.model; Metaspace with
//     prepend_scheme "always"): a text piece that already starts with a space (the start of the text, or
//     right after a special token) gets no extra dummy prefix: " A" -> "▁A" where sentencepiece makes
//     "▁▁A" (e.g. "▁", "▁A"). LLaVA-1.5 trains with the slow tokenizer (use_fast=False), so mole follows
//     sentencepiece. The templates (language/conversation.h) produce such a piece only when a turn's own
//     text has one (<image> is followed by "\n", </s> by "USER", <s> by "[INST]"; but a question that is
//     only "<image>" gives "<image> ASSISTANT:"), so for usual prompts all three agree (tested).
//   - decode: mole drops the dummy prefix of each run of text between special tokens, so that decode inverts
//     encode ("a<image>b" -> "ab" with skip_special); transformers keeps it as a space ("a b") and strips
//     one leading space of the whole text (" A cat." -> "A cat."). On text without special tokens that does
//     not start with a space they agree (tested).
//   - a token named only in added_tokens.json counts as special (transformers: not special); this only
//     changes decode(skip_special). AddedToken's single_word and normalized flags are not read (LLaMA's
//     added tokens have single_word=false, and the normaliser is the identity).
#pragma once

#include <cstdint>
#include <memory>

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace mole {

class ByteLevelBpe;  // language/bpe_tokenizer.h

// A tokenizer file or folder that cannot be read or is inconsistent; the message names the file.
struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Settings for Tokenizer::train. The defaults are LLaMA's own trainer_spec (read from its tokenizer.model):
// BPE, byte_fallback, split_digits, identity normalisation without removing extra whitespace, whitespace-only
// pieces allowed, unk=0 bos=1 eos=2 and no pad piece.
struct TrainOptions {
  std::string model_type = "bpe";  // bpe (LLaMA) or unigram
  // LLaMA used 0.99995 on a huge corpus; 1.0 keeps every character of a small corpus (rarer ones still
  // round-trip through byte fallback).
  double character_coverage = 1.0;
  int64_t max_sentence_length = 4192;  // bytes; longer corpus lines are skipped by sentencepiece
  int64_t max_sentencepiece_length = 16;
  int64_t input_sentence_size = 0;     // lines sampled from the corpus; 0 = all (no random sampling)
  uint32_t seed = 1234;                // sentencepiece's random generator (sampling, unigram seeding)
  int64_t model_max_length = 2048;     // written to tokenizer_config.json
  bool verbose = false;                // sentencepiece's training log on stderr
};

class Tokenizer {
 public:
  // A folder with only tokenizer.json (no tokenizer.model) is read as a byte-level BPE tokenizer
  // (language/bpe_tokenizer.h): ids as the `tokenizers` library's; bos/eos/pad from tokenizer_config.json
  // (bos_token, eos_token, pad_token), else the post-processor's first token as bos and no pad; encode_no_prefix is
  // encode (byte-level BPE has no dummy prefix); added tokens, <image> among them, come from tokenizer.json.
  // `dir_or_file`: a tokenizer.model file, or a folder holding tokenizer.model and optionally
  // added_tokens.json ({"<image>": 32000, "<pad>": 32001}) and tokenizer_config.json (its
  // "added_tokens_decoder" and bos/eos/unk/pad_token). Added tokens must take the ids right after the
  // sentencepiece vocabulary with no gap; entries below it must name the sentencepiece piece of that id.
  static Tokenizer load(const std::string& dir_or_file);

  // Trains a sentencepiece model on `corpus_file` (one sentence per line) with `vocab_size` pieces (the
  // sentencepiece vocabulary, like LLaMA's 32000; <image> and <pad> come on top as vocab_size and
  // vocab_size + 1) and writes out_dir/tokenizer.model, added_tokens.json, tokenizer_config.json,
  // special_tokens_map.json. Deterministic: the same corpus and options give byte-identical files (the
  // corpus is fed from memory so its path is not recorded, one thread, fixed seed).
  static void train(const std::string& corpus_file, int64_t vocab_size, const std::string& out_dir,
                    const TrainOptions& options = TrainOptions());

  // Text -> ids as described at the top of this file (LlamaTokenizer legacy=True, add_eos_token=False).
  std::vector<int64_t> encode(const std::string& text, bool add_bos) const;
  // As encode(text, false), but the first piece gets no dummy prefix "▁": the continuation of a string
  // whose earlier part was encoded separately. encode_no_prefix(" A cat.") gives the ids that " A cat."
  // has inside "ASSISTANT: A cat." (where sentencepiece never joins a piece across the space).
  // Pieces after a special token inside `text` still get the prefix, as in encode().
  std::vector<int64_t> encode_no_prefix(const std::string& text) const;
  // Ids -> text. Runs of sentencepiece ids between special tokens are decoded by sentencepiece (bytes
  // rejoined, the dummy prefix of each run dropped), so decode(encode(x, b), false) == x whenever
  // sentencepiece round-trips x. skip_special drops bos/eos/unk/pad and every added token marked special;
  // otherwise they are written as their text ("<s>", "<image>").
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = true) const;

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  // tokenizer_config.json's pad_token when given, else the <pad> added token, else unk (LLaVA's train.py
  // sets pad_token = unk_token for its v1 templates), else eos. Padded positions carry label -100, so the
  // choice only matters for the embedding row read there.
  int64_t pad_id() const { return pad_id_; }
  int64_t image_token_id() const { return image_token_id_; }  // the "<image>" added token, -1 when absent
  int64_t sp_vocab_size() const;                               // sentencepiece pieces only
  int64_t vocab_size() const;                                  // including added tokens
  std::string id_to_piece(int64_t id) const;                   // "▁cat", "<0x0A>", "<image>"
  int64_t token_to_id(const std::string& token) const;         // an added token or a piece; -1 when unknown
  bool is_special(int64_t id) const;  // bos/eos/unk/pad or an added token marked special
  // The Hugging Face tokenizer.json of this tokenizer, as transformers' LlamaConverter writes it from
  // tokenizer.model (convert_slow_tokenizer.py: BPE with byte_fallback, merges from SentencePieceExtractor, Metaspace
  // prepend_scheme "always", BOS by TemplateProcessing) plus the added tokens. transformers 5 loads a llava-hf
  // folder's tokenizer with the generic TokenizersBackend, which without this file converts tokenizer.model in a
  // way that differs from LlamaTokenizer (no dummy prefix); mole export writes it. Needs a BPE model.
  nlohmann::json hf_tokenizer_json() const;
  // A copy with `contents` added as special tokens after the last id, those it has already left out (a stock
  // Vicuna / LLaMA tokenizer given <image> and <pad>, as transformers' convert_llava_weights_to_hf.py adds them);
  // <image> and a <pad> added become image_token_id() and pad_id(). Sentencepiece tokenizers only.
  Tokenizer with_added_tokens(const std::vector<std::string>& contents) const;
  // Writes this tokenizer's added tokens into the tokenizer files of `dir` (copies of its folder's, or none):
  // added_tokens.json, tokenizer_config.json's added_tokens_decoder (other keys kept) and, when pad is an added
  // token, pad_token there and in special_tokens_map.json. So a folder made from a grown tokenizer loads as it.
  void write_added_tokens(const std::string& dir) const;
  // `content` is a string encode() splits out as one id (an added token, or <s> </s> <unk>).
  bool is_added_token(const std::string& content) const;
  const std::string& source() const { return source_; }  // the tokenizer.model this was loaded from

 private:
  struct AddedToken {
    std::string content;
    int64_t id = -1;
    bool special = true;
    bool lstrip = false, rstrip = false;  // strip whitespace on that side of the token (HF AddedToken)
  };
  // Encodes one piece that contains no added-token string; `prefix`: keep sentencepiece's dummy prefix.
  std::vector<int64_t> encode_plain(const std::string& piece, bool prefix) const;
  std::vector<int64_t> encode_impl(const std::string& text, bool prefix_first) const;
  const AddedToken* added_by_id(int64_t id) const;

  // A folder with tokenizer.json and no tokenizer.model: the byte-level BPE backend (Llama-3, Qwen2, ...); every
  // method below goes to it when set, and sp_ is null.
  static Tokenizer load_byte_level(const std::string& dir);
  std::shared_ptr<const ByteLevelBpe> bpe_;
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string source_;
  std::vector<AddedToken> split_tokens_;  // every string encode() splits on: added tokens and <s> </s> <unk>
  int64_t n_added_ = 0;                   // split_tokens_ with id >= sp_vocab_size()
  int64_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1, pad_id_ = -1, image_token_id_ = -1;
  std::string anchor_;                    // a character in no piece, for encode_no_prefix
  std::vector<int64_t> anchor_ids_;       // encode_plain(anchor_, true)
};

}  // namespace mole
