// Python 3 `str` semantics on UTF-8 text, for the evaluation scripts mole reproduces (eval/vqa_metrics.h):
// they lower-case, split and strip with Python's Unicode rules and match the regex `\d` (any Unicode decimal
// digit), so an answer with a non-ASCII letter, a no-break space or a fullwidth digit scores the same here.
//
// Reference: CPython Objects/unicodeobject.c (str.lower, str.split(), str.strip()), Objects/unicodectype.c
// (_PyUnicode_IsWhitespace, _PyUnicode_IsDecimalDigit); the tables in py_text.cpp were generated from
// Python 3.11.7 (Unicode 14.0.0).
//
// lower() includes Python's two context rules: U+0130 becomes "i" + U+0307, and a capital sigma that ends a
// word becomes the final form U+03C2. Invalid UTF-8 bytes (JSON readers never produce them) pass through
// unchanged, one code point each.
#pragma once

#include <string>
#include <vector>

namespace mole {

// Decodes the code point at s[i] and advances i past it (an invalid byte is returned as itself).
char32_t utf8_next(const std::string& s, size_t* i);
void utf8_append(std::string* out, char32_t cp);

bool py_isspace(char32_t cp);    // str.isspace(): what split() and strip() treat as whitespace
bool py_isdecimal(char32_t cp);  // category Nd: what the regex \d matches in a str pattern

std::string py_lower(const std::string& s);              // str.lower()
std::string py_strip(const std::string& s);              // str.strip()
std::vector<std::string> py_split(const std::string& s);  // str.split() (runs of whitespace, no empties)
// str.replace(old, new) with a non-empty `from`.
std::string py_replace(const std::string& s, const std::string& from, const std::string& to);

}  // namespace mole
