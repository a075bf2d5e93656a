// A Hugging Face tokenizer.json byte-level BPE tokenizer (what GPT-2, Llama-3, Qwen2 and Mistral-Nemo ship),
// giving the ids the `tokenizers` library gives (tests/language/test_bpe_tokenizer.cpp [reference], against
// tests/reference/make_bpe_reference.py). docs/FORMATS.md "tokenizer.json (byte-level BPE)" lists what is
// read and what is refused.
//
// Reference: huggingface/tokenizers, tokenizers/src/ —
//   tokenizer/mod.rs (encode_single_sequence, decode), tokenizer/added_vocabulary.rs (extract_and_normalize,
//   find_matches), pre_tokenizers/split.rs + tokenizer/pattern.rs (Split, Isolated), pre_tokenizers/byte_level.rs
//   (ByteLevel pre-tokenizer and decoder), models/bpe/model.rs + word.rs (BPE, ignore_merges, merge_all),
//   processors/template.rs (TemplateProcessing).
//
// How text becomes ids (encode):
//   1. Added tokens are split out of the raw text: first those with normalized=false, on the raw text; then,
//      in each remaining piece after the normalizer (NFC or none) ran on it, those with normalized=true
//      (matched in their normalized spelling). Matching is leftmost-longest, left to right; lstrip / rstrip
//      widen a match over the Unicode whitespace beside it. Each match is its one id.
//   2. Each remaining piece goes through the pre-tokenizer: the Split regexes (PCRE2, behaviour Isolated: the
//      matches and the gaps between them are all pieces), then ByteLevel (a leading space when
//      add_prefix_space and the piece does not start with one; GPT-2's regex when use_regex; each byte becomes
//      one of GPT-2's 256 printable characters).
//   3. Each pre-token is BPE-encoded: one id when ignore_merges and the pre-token is itself in the vocabulary,
//      else its byte characters merged lowest-rank pair first (leftmost on ties) until no merge applies.
//   4. encode_with_post_processor adds what TemplateProcessing's "single" template puts around the sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "language/tokenizer.h"  // TokenizerError

namespace mole {

class ByteLevelBpe {
 public:
  // Reads tokenizer.json; anything it does not support is a TokenizerError naming the file and the key.
  static ByteLevelBpe load(const std::string& tokenizer_json_path);

  // Text (UTF-8; anything else is a TokenizerError) -> ids, without the post-processor's tokens
  // (tokenizers' encode(text, add_special_tokens=False)).
  std::vector<int64_t> encode(const std::string& text) const;
  // As encode, plus what the post-processor adds: TemplateProcessing's "single" template (Llama-3's
  // <|begin_of_text|> first); ByteLevel or no post-processor add nothing (encode(text, add_special_tokens=True)).
  std::vector<int64_t> encode_with_post_processor(const std::string& text) const;
  // The normalizer and the pre-tokenizer alone (no added tokens, no model): the pre-tokens in their byte-level
  // spelling ("Ġworld"), as tokenizers' pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)).
  std::vector<std::string> pre_tokenize(const std::string& text) const;
  // Ids -> text as tokenizers' decode: with the ByteLevel decoder the tokens' byte characters become bytes and
  // invalid UTF-8 becomes U+FFFD; without a decoder the tokens are joined with spaces. skip_special drops
  // added tokens marked special. Ids outside the vocabulary are dropped, as the library does.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const;

  int64_t vocab_size() const;                           // model vocabulary and added tokens: max id + 1
  int64_t token_to_id(const std::string& token) const;  // an added token or a vocabulary entry; -1 when absent
  std::string id_to_token(int64_t id) const;            // "Ġthe", "<|eot_id|>"; TokenizerError when unknown
  bool is_special(int64_t id) const;                    // an added token with "special": true
  int64_t post_processor_bos() const;                   // the id TemplateProcessing puts first; -1 when none
  const std::string& source() const;                    // the tokenizer.json this was loaded from

 private:
  struct Impl;                        // language/bpe_tokenizer.cpp
  std::shared_ptr<const Impl> impl_;  // immutable after load: copies share it, encode is thread-safe
};

}  // namespace mole
