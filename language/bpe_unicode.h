// The Unicode pieces of the tokenizer.json byte-level BPE (language/bpe_tokenizer.h), each matching what the
// Rust `tokenizers` library uses: UTF-8 decoding and String::from_utf8_lossy, Unicode White_Space (Rust regex
// `\s`), NFC (the unicode-normalization crate; here utf8proc), and the Split pre-tokenizer's regexes
// (Oniguruma in the library; here PCRE2 with UTF + UCP, restricted to the syntax on which the two agree).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

namespace mole::bpe {

// Length of the valid UTF-8 sequence at s[i] (its code point in *cp), or 0 when none starts there
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
size_t utf8_next(const std::string& s, size_t i, uint32_t* cp);
// Byte offset of the first invalid UTF-8 sequence in s, or std::string::npos when s is valid.
size_t utf8_invalid_at(const std::string& s);
void append_utf8(std::string& out, uint32_t cp);
// Rust's String::from_utf8_lossy: each maximal prefix of a valid sequence that breaks off, and each byte that
// cannot start one, becomes one U+FFFD.
std::string utf8_lossy(const std::string& bytes);
// Unicode White_Space (25 code points): Rust regex's `\s`, which added_vocabulary.rs strips for lstrip / rstrip.
bool is_white_space(uint32_t c);
// NFC of valid UTF-8 (ASCII is returned as it is, without a call into utf8proc).
std::string nfc(const std::string& s);

struct Pcre2Free {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
// Per-call scratch for SplitRegex (one per encode call, so that a shared tokenizer stays thread-safe).
using MatchData = std::unique_ptr<pcre2_match_data, Pcre2Free>;
MatchData new_match_data();

// A Split pre-tokenizer regex. compile() spells \s out as Unicode White_Space (Oniguruma's \s; PCRE2's adds
// U+180E) and refuses (TokenizerError naming `where`) what Oniguruma (Ruby syntax) and PCRE2 read differently:
// ^ and $ (line anchors in Ruby), \w \b \h and other letter escapes, inline flag groups other than (?i:...),
// nested classes and && (class set operations in Ruby), \S inside a class, and patterns that can match the
// empty string (Oniguruma's iterator steps over those differently). Character classes follow PCRE2's Unicode
// tables (14.0 in Debian 12's 10.42), the library's Oniguruma has 16.0: the ~9400 letters, digits and marks
// assigned since (Kawi, Garay, CJK Extension H/I, ...) are not \p{L} / \p{N} / \p{M} here.
class SplitRegex {
 public:
  static SplitRegex compile(const std::string& pattern, const std::string& where);
  // Split behaviour "Isolated" (tokenizer/pattern.rs find_matches, then pre_tokenizers/split.rs): the leftmost
  // matches from left to right, each a piece, and the non-empty gaps between them pieces too, appended to
  // `out`. `text` must be valid UTF-8 (not checked again here).
  void split_isolated(const std::string& text, pcre2_match_data* md, std::vector<std::string>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_, where_;
  std::unique_ptr<pcre2_code, Pcre2Free> code_;
};

}  // namespace mole::bpe
