#include "language/bpe_unicode.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include <utf8proc.h>

#include "language/tokenizer.h"  // TokenizerError

namespace mole::bpe {

size_t utf8_next(const std::string& s, size_t i, uint32_t* cp) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const size_t left = s.size() - i;
  const unsigned char c = p[0];
  if (c < 0x80) return *cp = c, 1;
  size_t width = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  if (width == 0 || left < width) return 0;
  // The second byte's range rules out overlong forms, surrogates and code points above U+10FFFF.
  const unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
  if (p[1] < lo || p[1] > hi) return 0;
  uint32_t v = c & (0x7F >> width);
  for (size_t k = 1; k < width; ++k) {
    if ((p[k] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (p[k] & 0x3F);
  }
  return *cp = v, width;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

// The ByteLevel decoder's last step (byte_level.rs decode_chain); the same maximal-subpart rule as Unicode's
// recommended practice.
std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    uint32_t cp;
    if (size_t n = utf8_next(bytes, i, &cp)) {
      out.append(bytes, i, n);
      i += n;
      continue;
    }
    // Skip the lead byte and the continuation bytes that still fit it.
    const auto c = static_cast<unsigned char>(bytes[i]);
    const size_t width = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 1;
    size_t j = i + 1;
    for (size_t k = 1; k < width && j < bytes.size(); ++k, ++j) {
      const auto d = static_cast<unsigned char>(bytes[j]);
      const unsigned char lo = k == 1 && c == 0xE0 ? 0xA0 : k == 1 && c == 0xF0 ? 0x90 : 0x80;
      const unsigned char hi = k == 1 && c == 0xED ? 0x9F : k == 1 && c == 0xF4 ? 0x8F : 0xBF;
      if (d < lo || d > hi) break;
    }
    out += "\xEF\xBF\xBD";
    i = j;
  }
  return out;
}

bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

size_t utf8_invalid_at(const std::string& s) {
  uint32_t cp;
  for (size_t i = 0, n; i < s.size(); i += n)
    if ((n = utf8_next(s, i, &cp)) == 0) return i;
  return std::string::npos;
}

// utf8proc_NFC (UTF8PROC_STABLE | UTF8PROC_COMPOSE) with an explicit length, so that U+0000 is a character.
std::string nfc(const std::string& s) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) return s;
  utf8proc_uint8_t* out = nullptr;
  const auto* in = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  const utf8proc_ssize_t n =
      utf8proc_map(in, utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw TokenizerError(std::string("NFC: ") + utf8proc_errmsg(n));
  std::string r(reinterpret_cast<const char*>(out), size_t(n));
  std::free(out);
  return r;
}

// ---- Split regexes -----------------------------------------------------------------------------------------

namespace {

// Unicode White_Space (is_white_space) as class contents: Oniguruma's \s. PCRE2's \s with UCP adds U+180E
// MONGOLIAN VOWEL SEPARATOR (space in Unicode before 6.3), so \s is spelled out for PCRE2.
const char* const kWhiteSpace = "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

// The library compiles Split patterns with Oniguruma (Ruby syntax); we use PCRE2 with UTF + UCP. Checked code
// point by code point against the library (tokenizers 0.23.3), the two agree on \S \d \p{L} \p{N} \p{Lu} \p{Ll}
// \p{Lt} \p{Lm} \p{Lo} \p{M} up to their Unicode versions, on (?i:'s|'t|...) (both also fold U+017F to s), and
// on \s once it is spelled out (kWhiteSpace). Constructs where the two differ are refused: ^ and $ (line
// anchors in Ruby), \w \b \h and other letter escapes, inline flag groups other than (?i:...), nested classes
// and && (class set operations in Ruby), \S inside a class (no PCRE2 spelling). Returns the PCRE2 pattern.
std::string translate_regex(const std::string& p, const std::string& where) {
  auto refuse = [&](size_t i, const std::string& what) {
    throw TokenizerError(where + ": " + what + " at offset " + std::to_string(i) + " of the regex is not supported " +
                         "(its Oniguruma and PCRE2 meanings differ or are untested)");
  };
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) refuse(i, "a trailing backslash");
      const char e = p[i + 1];
      if (e == 's' || e == 'S') {
        if (in_class && e == 'S') refuse(i, "\\S inside a class");
        out += in_class ? kWhiteSpace : std::string(e == 's' ? "[" : "[^") + kWhiteSpace + "]";
        ++i;
        continue;
      }
      const size_t from = i++;
      if (e == 'p' || e == 'P') {
        size_t close = p.find('}', i);
        if (i + 1 >= p.size() || p[i + 1] != '{' || close == std::string::npos) refuse(from, "\\p without {name}");
        for (size_t k = i + 2; k < close; ++k)
          if (!std::isalnum(static_cast<unsigned char>(p[k])) && p[k] != '_') refuse(k, "a \\p{} name");
        i = close;
      } else if (e == 'x') {
        if (i + 1 < p.size() && p[i + 1] == '{') {
          size_t close = p.find('}', i);
          if (close == std::string::npos) refuse(from, "\\x{ without }");
          i = close;
        } else if (i + 2 < p.size() && std::isxdigit(static_cast<unsigned char>(p[i + 1])) &&
                   std::isxdigit(static_cast<unsigned char>(p[i + 2]))) {
          i += 2;
        } else {
          refuse(from, "\\x without two hex digits");
        }
      } else if (std::string("dDrntfv").find(e) == std::string::npos &&
                 (std::isalnum(static_cast<unsigned char>(e)) || static_cast<unsigned char>(e) >= 0x80)) {
        refuse(from, std::string("the escape \\") + e);
      }  // else an escaped punctuation character, literal in both
      out.append(p, from, i + 1 - from);
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      else if (c == '[') refuse(i, "'[' inside a class");
      else if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') refuse(i, "'&&' inside a class");
    } else if (c == '[') {
      in_class = true;
      const size_t first = i + 1 < p.size() && p[i + 1] == '^' ? i + 2 : i + 1;
      if (first < p.size() && p[first] == ']') refuse(i, "a class starting with ']'");
    } else if (c == '^' || c == '$') {
      refuse(i, std::string("the anchor ") + c);
    } else if (c == '(' && i + 1 < p.size() && p[i + 1] == '?') {
      static const char* const kGroups[] = {"(?:", "(?i:", "(?=", "(?!", "(?<=", "(?<!"};
      bool known = false;
      for (const char* g : kGroups) known = known || p.compare(i, std::char_traits<char>::length(g), g) == 0;
      if (!known) refuse(i, "the group " + p.substr(i, 4));
    }
    out += c;
  }
  if (in_class) refuse(p.size(), "an unclosed class");
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof(buf));
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

MatchData new_match_data() { return MatchData(pcre2_match_data_create(1, nullptr)); }

SplitRegex SplitRegex::compile(const std::string& pattern, const std::string& where) {
  const std::string pcre2_pattern = translate_regex(pattern, where);
  int err = 0;
  PCRE2_SIZE offset = 0;
  std::unique_ptr<pcre2_compile_context, void (*)(pcre2_compile_context*)> ctx(pcre2_compile_context_create(nullptr),
                                                                               pcre2_compile_context_free);
  pcre2_set_newline(ctx.get(), PCRE2_NEWLINE_LF);  // as Oniguruma: '.' stops only at \n
  SplitRegex r;
  r.pattern_ = pattern, r.where_ = where;
  r.code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre2_pattern.data()), pcre2_pattern.size(),
                              PCRE2_UTF | PCRE2_UCP, &err, &offset, ctx.get()));
  if (!r.code_)
    throw TokenizerError(where + ": the regex does not compile (PCRE2, offset " + std::to_string(offset) + " of " +
                         pcre2_pattern + "): " + pcre2_message(err));
  uint32_t min_length = 0;
  pcre2_pattern_info(r.code_.get(), PCRE2_INFO_MINLENGTH, &min_length);
  if (min_length == 0) throw TokenizerError(where + ": the regex can match the empty string, which is not supported");
  pcre2_jit_compile(r.code_.get(), PCRE2_JIT_COMPLETE);  // where JIT is unavailable pcre2_match interprets
  return r;
}

void SplitRegex::split_isolated(const std::string& text, pcre2_match_data* md, std::vector<std::string>& out) const {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t prev = 0;
  while (prev < text.size()) {
    int rc = pcre2_match(code_.get(), subject, text.size(), prev, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // a long backtrack: the interpreter keeps its frames on the heap
      rc = pcre2_match(code_.get(), subject, text.size(), prev, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw TokenizerError(where_ + ": matching the regex failed: " + pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[0] > prev) out.push_back(text.substr(prev, ov[0] - prev));
    out.push_back(text.substr(ov[0], ov[1] - ov[0]));
    prev = ov[1];
  }
  if (prev < text.size()) out.push_back(text.substr(prev));
}

}  // namespace mole::bpe
