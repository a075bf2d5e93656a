#include "language/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <optional>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "core/json_config.h"
#include "language/bpe_unicode.h"

namespace mole {

namespace {

using bpe::append_utf8;
using bpe::SplitRegex;
using bpe::utf8_next;

// GPT-2's pre-tokenizer regex, which ByteLevel applies when use_regex (byte_level.rs RE).
const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- GPT-2's byte <-> character table (byte_level.rs bytes_char) -------------------------------------------

struct ByteTable {
  std::array<std::string, 256> byte_char;  // byte -> the UTF-8 of its printable character
  std::array<int16_t, 324> char_byte;      // code point (all below 324) -> byte, -1 for the others
  ByteTable() {
    char_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      // '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves; the other 68 bytes take 256, 257, ...
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + n++);
      append_utf8(byte_char[b], cp);
      char_byte[cp] = int16_t(b);
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

// ---- tokenizer.json fields ---------------------------------------------------------------------------------

// "a.b" for a key inside "a"; just "b" at the top level.
std::string sub(const std::string& key, const std::string& name) { return key.empty() ? name : key + "." + name; }

struct Json {
  std::string file;
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw TokenizerError(file + ": " + key + ": " + what);
  }
  // `obj` must be an object whose keys are all in `known` (unknown ones could change ids, so none is skipped).
  void only_keys(const json& obj, const std::string& key, std::initializer_list<const char*> known) const {
    if (!obj.is_object()) fail(key, std::string("expected an object, got ") + obj.type_name());
    for (const auto& [k, v] : obj.items())
      if (std::none_of(known.begin(), known.end(), [&k = k](const char* n) { return k == n; })) {
        std::string list;
        for (const char* n : known) list += std::string(list.empty() ? "" : ", ") + n;
        fail(sub(key, k), "unknown key (known here: " + list + ")");
      }
  }
  const json& need(const json& obj, const std::string& key, const char* name) const {
    auto it = obj.find(name);
    if (it == obj.end()) fail(sub(key, name), "missing");
    return *it;
  }
  std::string string_of(const json& v, const std::string& key) const {
    if (!v.is_string()) fail(key, std::string("expected a string, got ") + v.type_name());
    return v.get<std::string>();
  }
  // obj[name] as a bool; null or absent is `fallback` when given, else an error.
  bool flag(const json& obj, const std::string& key, const char* name, std::optional<bool> fallback = {}) const {
    auto it = obj.find(name);
    if ((it == obj.end() || it->is_null()) && fallback) return *fallback;
    if (it == obj.end()) fail(sub(key, name), "missing");
    if (!it->is_boolean()) fail(sub(key, name), std::string("expected true or false, got ") + it->dump());
    return it->get<bool>();
  }
  // The value must be null (or absent) or one of `allowed`; anything else is a feature mole does not implement.
  void must_be(const json& obj, const std::string& key, const char* name, const std::vector<json>& allowed,
               const std::string& why) const {
    auto it = obj.find(name);
    if (it == obj.end() || it->is_null()) return;
    if (std::find(allowed.begin(), allowed.end(), *it) == allowed.end())
      fail(sub(key, name), it->dump() + " is not supported (" + why + ")");
  }
  std::string type_of(const json& obj, const std::string& key) const {
    if (!obj.is_object()) fail(key, std::string("expected an object, got ") + obj.type_name());
    return string_of(need(obj, key, "type"), sub(key, "type"));
  }
};

int64_t id_of(const Json& j, const json& v, const std::string& key) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
    j.fail(key, "expected an id (an integer from 0 to 2^31-1), got " + json_excerpt(v));
  return v.get<int64_t>();
}

// ByteLevel as pre-tokenizer, decoder or post-processor: add_prefix_space / trim_offsets / use_regex are bools.
void check_byte_level(const Json& j, const json& obj, const std::string& key) {
  j.only_keys(obj, key, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
  for (const char* name : {"add_prefix_space", "trim_offsets", "use_regex"}) j.flag(obj, key, name, true);
}

struct AddedToken {
  std::string content;
  std::string match;  // what is searched for: the content, or its NFC form when normalized under NFC
  int64_t id = -1;
  bool special = false, lstrip = false, rstrip = false, normalized = false;
};

// daachorse's MatchKind::LeftmostLongest over the added tokens' strings (a byte trie).
class AddedMatcher {
 public:
  void add(const std::string& s, int32_t token) {
    int32_t node = 0;
    for (unsigned char b : s) {
      auto [it, fresh] = edges_.try_emplace(key(node, b), int32_t(terminal_.size()));
      if (fresh) terminal_.push_back(-1);
      node = it->second;
    }
    terminal_[node] = token;
    first_byte_[static_cast<unsigned char>(s[0])] = true;
  }
  bool empty() const { return terminal_.size() == 1; }
  // The longest string starting at text[i]: its token (its end in *end), or -1.
  int32_t longest_at(const std::string& text, size_t i, size_t* end) const {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) return -1;
    int32_t node = 0, best = -1;
    for (size_t k = i; k < text.size(); ++k) {
      auto it = edges_.find(key(node, static_cast<unsigned char>(text[k])));
      if (it == edges_.end()) break;
      node = it->second;
      if (terminal_[node] >= 0) best = terminal_[node], *end = k + 1;
    }
    return best;
  }

 private:
  static uint64_t key(int32_t node, unsigned char b) { return (uint64_t(node) << 8) | b; }
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_{-1};  // node -> token index, -1 when no string ends there; node 0 is the root
  std::array<bool, 256> first_byte_{};
};

struct Segment {
  std::string text;
  int64_t id = -1;  // an added token's id, or -1 for text still to tokenize
};

}  // namespace

// ---- the tokenizer -----------------------------------------------------------------------------------------

struct ByteLevelBpe::Impl {
  std::string source;
  bool use_nfc = false;                 // "normalizer": {"type": "NFC"}
  std::vector<SplitRegex> splits;       // the Split pre-tokenizers, in order
  bool add_prefix_space = false, use_regex = true;
  std::optional<SplitRegex> gpt2;       // ByteLevel's own regex, when use_regex
  bool byte_level_decoder = false;      // else no decoder: tokens joined with " "
  std::vector<int64_t> before, after;   // TemplateProcessing "single" around the sequence

  std::unordered_map<std::string, int32_t> vocab;  // the model's: ids 0 .. vocab.size()-1
  std::vector<std::string> vocab_r;                // id -> token
  std::array<int32_t, 256> byte_id;                // byte -> the id of its character, -1 when not in the vocab
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> merges;  // (left, right) -> (rank, merged id)
  bool ignore_merges = false;

  std::vector<AddedToken> added;
  std::unordered_map<std::string, int64_t> added_ids;  // content -> id
  std::unordered_map<int64_t, size_t> added_by_id;     // id -> index in `added`
  std::unordered_set<std::string> special_contents;
  AddedMatcher raw_matcher, normalized_matcher;        // normalized=false tokens / normalized=true ones
  int64_t size = 0;                                    // max id + 1

  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  // added_vocabulary.rs find_matches + split_with_indices: cut `text` at the matcher's tokens.
  void split_added(const std::string& text, const AddedMatcher& matcher, std::vector<Segment>& out) const {
    if (matcher.empty()) return out.push_back({text, -1});
    size_t start_offset = 0;
    for (size_t i = 0; i < text.size();) {
      size_t stop = 0;
      const int32_t t = matcher.longest_at(text, i, &stop);
      if (t < 0) {
        ++i;
        continue;
      }
      const AddedToken& token = added[t];
      size_t start = i;
      i = stop;  // the search goes on after the match itself, whatever lstrip/rstrip take
      if (token.lstrip) {  // back over the whitespace before it, but not into the previous match
        size_t s = start;
        while (s > 0) {
          size_t p = s - 1;
          while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
          uint32_t cp;
          if (!utf8_next(text, p, &cp) || !bpe::is_white_space(cp)) break;
          s = p;
        }
        start = std::max(s, start_offset);
      }
      if (token.rstrip) {
        uint32_t cp;
        size_t n;
        while (stop < text.size() && (n = utf8_next(text, stop, &cp)) && bpe::is_white_space(cp)) stop += n;
      }
      if (start_offset < start) out.push_back({text.substr(start_offset, start - start_offset), -1});
      out.push_back({text.substr(start, stop - start), token.id});
      start_offset = stop;
    }
    if (start_offset < text.size()) out.push_back({text.substr(start_offset), -1});
  }

  // model.rs tokenize + word.rs merge_all: one pre-token (raw bytes; each byte is one character of the
  // byte-level alphabet) to ids.
  void bpe(const std::string& bytes, std::vector<int64_t>& out) const {
    const ByteTable& table = byte_table();
    if (ignore_merges) {
      std::string word;
      for (unsigned char b : bytes) word += table.byte_char[b];
      if (auto it = vocab.find(word); it != vocab.end()) return out.push_back(it->second);
    }
    struct Symbol {
      int32_t id, prev, next;
      bool alive;
    };
    std::vector<Symbol> sym;
    sym.reserve(bytes.size());
    for (unsigned char b : bytes) {
      // A byte without an id is dropped, as merge_word does when there is no unk_token (load accepts
      // unk_token and byte_fallback only when every byte has an id).
      if (byte_id[b] < 0) continue;
      const int32_t n = int32_t(sym.size());
      if (n > 0) sym.back().next = n;
      sym.push_back({byte_id[b], n - 1, -1, true});
    }
    struct Merge {
      uint32_t rank;
      int32_t pos, new_id;
      bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }  // min-heap
    };
    std::priority_queue<Merge> queue;
    for (size_t k = 0; k + 1 < sym.size(); ++k)
      if (auto it = merges.find(pair_key(sym[k].id, sym[k + 1].id)); it != merges.end())
        queue.push({it->second.first, int32_t(k), it->second.second});
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Symbol& cur = sym[top.pos];
      if (!cur.alive || cur.next < 0) continue;
      const Symbol right = sym[cur.next];
      auto it = merges.find(pair_key(cur.id, right.id));
      if (it == merges.end() || it->second.second != top.new_id) continue;  // a stale entry
      sym[cur.next].alive = false;
      cur.id = top.new_id;
      cur.next = right.next;
      if (right.next >= 0) sym[right.next].prev = top.pos;
      if (cur.prev >= 0)
        if (auto m = merges.find(pair_key(sym[cur.prev].id, cur.id)); m != merges.end())
          queue.push({m->second.first, cur.prev, m->second.second});
      if (cur.next >= 0)
        if (auto m = merges.find(pair_key(cur.id, sym[cur.next].id)); m != merges.end())
          queue.push({m->second.first, top.pos, m->second.second});
    }
    for (const Symbol& s : sym)
      if (s.alive) out.push_back(s.id);
  }

  // The pre-tokenizer on one piece of text without added tokens (already normalized): `f` gets each
  // pre-token as raw bytes.
  template <typename F>
  void pre_tokenize(const std::string& text, pcre2_match_data* md, F&& f) const {
    std::vector<std::string> pieces{text}, next;
    for (const SplitRegex& split : splits) {
      next.clear();
      for (const std::string& p : pieces) split.split_isolated(p, md, next);
      pieces.swap(next);
    }
    for (std::string& p : pieces) {
      // byte_level.rs: the prefix space goes on every piece that reaches ByteLevel, not only the first.
      if (add_prefix_space && p[0] != ' ') p.insert(0, 1, ' ');
      if (!gpt2) {
        f(p);
        continue;
      }
      next.clear();
      gpt2->split_isolated(p, md, next);
      for (const std::string& word : next) f(word);
    }
  }

  // The string decode works on for an id (tokenizer/mod.rs decode: simple_id_to_token, else the model's);
  // nullptr for an unknown id.
  const std::string* token_text(int64_t id) const {
    if (auto it = added_by_id.find(id); it != added_by_id.end()) return &added[it->second].match;
    if (id >= 0 && id < int64_t(vocab_r.size())) return &vocab_r[id];
    return nullptr;
  }

  void load_model(const Json& j, const json& model);
  void load_pre_tokenizer(const Json& j, const json& pre);
  void load_added_tokens(const Json& j, const json& tokens);
  void load_post_processor(const Json& j, const json& post, const std::string& key);
};

void ByteLevelBpe::Impl::load_model(const Json& j, const json& model) {
  const std::string type = j.type_of(model, "model");
  if (type != "BPE") j.fail("model.type", "'" + type + "' is not supported (only BPE)");
  j.only_keys(model, "model", {"type", "vocab", "merges", "ignore_merges", "byte_fallback", "dropout", "unk_token",
                               "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk"});
  j.must_be(model, "model", "dropout", {}, "BPE dropout makes ids random");
  j.must_be(model, "model", "continuing_subword_prefix", {""}, "only null or \"\"");
  j.must_be(model, "model", "end_of_word_suffix", {""}, "only null or \"\"");
  j.flag(model, "model", "fuse_unk", false);  // only acts on unk tokens, which there are none of
  ignore_merges = j.flag(model, "model", "ignore_merges", false);

  const json& v = j.need(model, "model", "vocab");
  if (!v.is_object()) j.fail("model.vocab", std::string("expected an object {token: id}, got ") + v.type_name());
  // The library numbers added tokens from vocab.len() on, so the ids must be exactly 0 .. len-1.
  const int64_t n_vocab = int64_t(v.size());
  vocab_r.resize(n_vocab);
  std::vector<bool> has_id(n_vocab);
  for (const auto& [token, id_json] : v.items()) {
    const std::string key = "model.vocab[\"" + token + "\"]";
    const int64_t id = id_of(j, id_json, key);
    if (id >= n_vocab) j.fail(key, std::to_string(id) + " is not below the number of entries (" +
                                       std::to_string(n_vocab) + "): the ids must be 0 .. entries-1");
    if (has_id[id]) j.fail("model.vocab", "id " + std::to_string(id) + " is given to both '" + vocab_r[id] +
                                              "' and '" + token + "'");
    vocab[token] = int32_t(id);
    vocab_r[id] = token, has_id[id] = true;
  }
  const ByteTable& table = byte_table();
  int missing_byte = -1;
  for (int b = 255; b >= 0; --b) {
    auto it = vocab.find(table.byte_char[b]);
    byte_id[b] = it == vocab.end() ? -1 : it->second;
    if (byte_id[b] < 0) missing_byte = b;
  }
  // model.rs merge_word: unk_token and byte_fallback act only on a character that has no id. With every byte's
  // character in the vocabulary (what ByteLevel training gives) there is none, and both can be accepted.
  if (missing_byte >= 0) {
    char hex[8];
    std::snprintf(hex, sizeof(hex), "0x%02X", missing_byte);
    const std::string why = std::string("only when every byte has its character in model.vocab; byte ") + hex +
                            " ('" + table.byte_char[missing_byte] + "') has none";
    j.must_be(model, "model", "unk_token", {}, why);
    j.must_be(model, "model", "byte_fallback", {false}, why);
  } else {
    if (model.contains("unk_token") && !model["unk_token"].is_null())
      j.string_of(model["unk_token"], "model.unk_token");
    j.flag(model, "model", "byte_fallback", false);
  }

  // model.rs BpeBuilder::build: merge i is (a, b) -> a+b with rank i; every part must be in the vocabulary.
  // A pair listed twice keeps its last rank, as the library's HashMap does.
  const json& m = j.need(model, "model", "merges");
  if (!m.is_array()) j.fail("model.merges", std::string("expected an array, got ") + m.type_name());
  const bool legacy = !m.empty() && m[0].is_string();  // "a b" strings (older files) or ["a", "b"] pairs
  uint32_t rank = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string key = "model.merges[" + std::to_string(i) + "]";
    std::string a, b;
    if (legacy) {
      const std::string line = j.string_of(m[i], key + " (the first entry is a string, so all must be)");
      if (line.rfind("#version", 0) == 0) continue;  // convert_merges_to_hashmap skips these lines
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        j.fail(key, "'" + line + "' is not two tokens separated by one space");
      a = line.substr(0, space), b = line.substr(space + 1);
    } else {
      if (!m[i].is_array() || m[i].size() != 2 || !m[i][0].is_string() || !m[i][1].is_string())
        j.fail(key, "expected a pair of strings [\"a\", \"b\"], got " + json_excerpt(m[i]));
      a = m[i][0].get<std::string>(), b = m[i][1].get<std::string>();
    }
    for (const std::string& token : {a, b, a + b})
      if (!vocab.count(token)) j.fail(key, "'" + token + "' is not in model.vocab");
    merges[pair_key(vocab[a], vocab[b])] = {rank++, vocab[a + b]};
  }
}

void ByteLevelBpe::Impl::load_pre_tokenizer(const Json& j, const json& pre) {
  const char* const supported = "supported: ByteLevel, or a Sequence of Split (Isolated) then one ByteLevel";
  if (pre.is_null()) j.fail("pre_tokenizer", std::string("null is not supported (") + supported + ")");
  const std::string type = j.type_of(pre, "pre_tokenizer");
  std::vector<std::pair<json, std::string>> steps;  // (object, key)
  if (type == "Sequence") {
    j.only_keys(pre, "pre_tokenizer", {"type", "pretokenizers"});
    const json& list = j.need(pre, "pre_tokenizer", "pretokenizers");
    if (!list.is_array() || list.empty()) j.fail("pre_tokenizer.pretokenizers", "expected a non-empty array");
    for (size_t i = 0; i < list.size(); ++i)
      steps.push_back({list[i], "pre_tokenizer.pretokenizers[" + std::to_string(i) + "]"});
  } else {
    steps.push_back({pre, "pre_tokenizer"});
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& [step, key] = steps[i];
    const std::string t = j.type_of(step, key);
    const bool last = i + 1 == steps.size();
    if (t == "ByteLevel" && last) {
      check_byte_level(j, step, key);
      add_prefix_space = j.flag(step, key, "add_prefix_space");
      use_regex = j.flag(step, key, "use_regex", true);  // serde default in byte_level.rs
      if (use_regex) gpt2 = SplitRegex::compile(kGpt2Regex, source + ": ByteLevel's GPT-2 regex");
    } else if (t == "Split" && !last) {
      j.only_keys(step, key, {"type", "pattern", "behavior", "invert"});
      const json& pattern = j.need(step, key, "pattern");
      if (!pattern.is_object() || !pattern.contains("Regex"))
        j.fail(key + ".pattern", json_excerpt(pattern) + " is not supported (only {\"Regex\": \"...\"})");
      j.only_keys(pattern, key + ".pattern", {"Regex"});
      const std::string behavior = j.string_of(j.need(step, key, "behavior"), key + ".behavior");
      if (behavior != "Isolated") j.fail(key + ".behavior", "'" + behavior + "' is not supported (only Isolated)");
      if (j.flag(step, key, "invert")) j.fail(key + ".invert", "true is not supported");
      splits.push_back(SplitRegex::compile(j.string_of(pattern["Regex"], key + ".pattern.Regex"),
                                           source + ": " + key + ".pattern.Regex"));
    } else {
      j.fail(key + ".type", "'" + t + "' is not supported here (" + supported + ")");
    }
  }
}

// tokenizer/serialization.rs then added_vocabulary.rs add_tokens: the "id" in the file is not read by the
// library, which gives each token its vocabulary id, or the next free id after the model's vocab.len(); a file
// whose ids disagree with that is refused rather than silently renumbered.
void ByteLevelBpe::Impl::load_added_tokens(const Json& j, const json& tokens) {
  if (tokens.is_null()) return;
  if (!tokens.is_array()) j.fail("added_tokens", std::string("expected an array, got ") + tokens.type_name());
  int64_t next_id = int64_t(vocab.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string key = "added_tokens[" + std::to_string(i) + "]";
    const json& t = tokens[i];
    j.only_keys(t, key, {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"});
    AddedToken a;
    a.content = j.string_of(j.need(t, key, "content"), key + ".content");
    if (a.content.empty()) j.fail(key + ".content", "empty");
    if (added_ids.count(a.content)) j.fail(key + ".content", "'" + a.content + "' is listed twice");
    if (j.flag(t, key, "single_word"))  // needs Rust regex's Unicode \w to be exact
      j.fail(key + ".single_word", "true is not supported ('" + a.content + "')");
    a.lstrip = j.flag(t, key, "lstrip");
    a.rstrip = j.flag(t, key, "rstrip");
    a.normalized = j.flag(t, key, "normalized");
    a.special = j.flag(t, key, "special");
    const int64_t file_id = id_of(j, j.need(t, key, "id"), key + ".id");
    auto in_vocab = vocab.find(a.content);
    a.id = in_vocab != vocab.end() ? in_vocab->second : next_id++;
    if (a.id != file_id)
      j.fail(key + ".id", std::to_string(file_id) + " for '" + a.content + "', but the tokenizers library gives it " +
                              std::to_string(a.id) + " (its vocabulary id, or the next id after the vocabulary)");
    // Normalized tokens are searched for in their normalized spelling, and decode from it (normalized_cache).
    a.match = a.normalized && use_nfc ? bpe::nfc(a.content) : a.content;
    (a.normalized ? normalized_matcher : raw_matcher).add(a.match, int32_t(added.size()));
    if (a.special) special_contents.insert(a.content);
    added_ids[a.content] = a.id;
    added_by_id[a.id] = added.size();
    added.push_back(a);
  }
}

void ByteLevelBpe::Impl::load_post_processor(const Json& j, const json& post, const std::string& key) {
  if (post.is_null()) return;
  const std::string type = j.type_of(post, key);
  if (type == "ByteLevel") {
    check_byte_level(j, post, key);  // only trims offsets
  } else if (type == "Sequence" && key == "post_processor") {
    j.only_keys(post, key, {"type", "processors"});
    const json& list = j.need(post, key, "processors");
    if (!list.is_array()) j.fail(key + ".processors", "expected an array");
    for (size_t i = 0; i < list.size(); ++i)
      load_post_processor(j, list[i], key + ".processors[" + std::to_string(i) + "]");
  } else if (type == "TemplateProcessing") {
    // processors/template.rs apply_template: the special tokens' ids in template order around sequence A.
    j.only_keys(post, key, {"type", "single", "pair", "special_tokens"});
    const json& specials = j.need(post, key, "special_tokens");
    if (!specials.is_object()) j.fail(key + ".special_tokens", "expected an object");
    const json& single = j.need(post, key, "single");
    if (!single.is_array()) j.fail(key + ".single", "expected an array");
    std::vector<int64_t> pre, post_ids;
    int n_sequences = 0;
    for (size_t i = 0; i < single.size(); ++i) {
      const std::string pkey = key + ".single[" + std::to_string(i) + "]";
      const json& piece = single[i];
      if (piece.is_object() && piece.size() == 1 && piece.contains("Sequence")) {
        j.only_keys(piece["Sequence"], pkey + ".Sequence", {"id", "type_id"});
        if (piece["Sequence"].value("id", json()) != "A") j.fail(pkey + ".Sequence.id", "only A in \"single\"");
        ++n_sequences;
      } else if (piece.is_object() && piece.size() == 1 && piece.contains("SpecialToken")) {
        j.only_keys(piece["SpecialToken"], pkey + ".SpecialToken", {"id", "type_id"});
        const std::string name = j.string_of(j.need(piece["SpecialToken"], pkey, "id"), pkey + ".SpecialToken.id");
        if (!specials.contains(name)) j.fail(key + ".special_tokens", "'" + name + "' (used in \"single\") missing");
        const json& ids = j.need(specials[name], key + ".special_tokens." + name, "ids");
        if (!ids.is_array()) j.fail(key + ".special_tokens." + name + ".ids", "expected an array");
        for (const json& id : ids) {
          const int64_t v = id_of(j, id, key + ".special_tokens." + name + ".ids");
          if (!token_text(v)) j.fail(key + ".special_tokens." + name + ".ids", std::to_string(v) + " is no token");
          (n_sequences == 0 ? pre : post_ids).push_back(v);
        }
      } else {
        j.fail(pkey, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}, got " + json_excerpt(piece));
      }
    }
    if (n_sequences != 1) j.fail(key + ".single", "must hold the sequence exactly once");
    before.insert(before.begin(), pre.begin(), pre.end());  // a later processor wraps the earlier ones' result
    after.insert(after.end(), post_ids.begin(), post_ids.end());
  } else {
    j.fail(key + ".type", "'" + type + "' is not supported (ByteLevel, TemplateProcessing, or a Sequence of them)");
  }
}

ByteLevelBpe ByteLevelBpe::load(const std::string& tokenizer_json_path) {
  auto impl = std::make_shared<Impl>();
  impl->source = tokenizer_json_path;
  const Json j{tokenizer_json_path};
  std::string text;
  try {
    text = read_input_file(tokenizer_json_path, "tokenizer");
  } catch (const std::runtime_error& e) {
    throw TokenizerError(e.what());
  }
  json root;
  try {
    root = parse_json_text(text);
  } catch (const json::exception& e) {
    throw TokenizerError(tokenizer_json_path + ": not valid JSON: " + e.what());
  }
  j.only_keys(root, "", {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
                         "post_processor", "decoder", "model"});
  j.must_be(root, "", "truncation", {}, "encode would cut ids; only null");
  j.must_be(root, "", "padding", {}, "encode would pad; only null");

  const json& normalizer = root.value("normalizer", json());
  if (!normalizer.is_null()) {
    const std::string type = j.type_of(normalizer, "normalizer");
    if (type != "NFC") j.fail("normalizer.type", "'" + type + "' is not supported (only null or NFC)");
    j.only_keys(normalizer, "normalizer", {"type"});
    impl->use_nfc = true;
  }
  impl->load_pre_tokenizer(j, j.need(root, "", "pre_tokenizer"));
  impl->load_model(j, j.need(root, "", "model"));
  impl->load_added_tokens(j, root.value("added_tokens", json()));
  int64_t max_id = int64_t(impl->vocab_r.size()) - 1;
  for (const AddedToken& a : impl->added) max_id = std::max(max_id, a.id);
  impl->size = max_id + 1;
  const json& decoder = root.value("decoder", json());
  if (!decoder.is_null()) {
    const std::string type = j.type_of(decoder, "decoder");
    if (type != "ByteLevel") j.fail("decoder.type", "'" + type + "' is not supported (only null or ByteLevel)");
    check_byte_level(j, decoder, "decoder");
    impl->byte_level_decoder = true;
  }
  impl->load_post_processor(j, root.value("post_processor", json()), "post_processor");
  ByteLevelBpe t;
  t.impl_ = std::move(impl);
  return t;
}

// tokenizer/mod.rs encode_single_sequence: AddedVocabulary::extract_and_normalize, pre-tokenizer, model.
std::vector<int64_t> ByteLevelBpe::encode(const std::string& text) const {
  const Impl& m = *impl_;
  if (size_t bad = bpe::utf8_invalid_at(text); bad != std::string::npos)
    throw TokenizerError(m.source + ": encode: the text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  // 1. normalized=false added tokens, on the raw text; 2. normalized=true ones, on each rest after the normalizer.
  std::vector<Segment> raw, segments;
  m.split_added(text, m.raw_matcher, raw);
  for (Segment& s : raw) {
    if (s.id >= 0) segments.push_back(std::move(s));
    else if (!s.text.empty()) m.split_added(m.use_nfc ? bpe::nfc(s.text) : s.text, m.normalized_matcher, segments);
  }
  bpe::MatchData md = bpe::new_match_data();
  std::vector<int64_t> ids;
  for (const Segment& s : segments) {
    if (s.id >= 0) ids.push_back(s.id);
    else if (!s.text.empty()) m.pre_tokenize(s.text, md.get(), [&](const std::string& word) { m.bpe(word, ids); });
  }
  return ids;
}

std::vector<std::string> ByteLevelBpe::pre_tokenize(const std::string& text) const {
  const Impl& m = *impl_;
  if (size_t bad = bpe::utf8_invalid_at(text); bad != std::string::npos)
    throw TokenizerError(m.source + ": pre_tokenize: the text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<std::string> out;
  if (text.empty()) return out;
  const ByteTable& table = byte_table();
  bpe::MatchData md = bpe::new_match_data();
  m.pre_tokenize(m.use_nfc ? bpe::nfc(text) : text, md.get(), [&](const std::string& word) {
    out.emplace_back();
    for (unsigned char b : word) out.back() += table.byte_char[b];
  });
  return out;
}

std::vector<int64_t> ByteLevelBpe::encode_with_post_processor(const std::string& text) const {
  std::vector<int64_t> ids = impl_->before;
  std::vector<int64_t> body = encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), impl_->after.begin(), impl_->after.end());
  return ids;
}

// tokenizer/mod.rs decode + byte_level.rs Decoder::decode_chain.
std::string ByteLevelBpe::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  const Impl& m = *impl_;
  const ByteTable& table = byte_table();
  std::string out;
  bool first = true;
  for (int64_t id : ids) {
    const std::string* token = m.token_text(id);
    if (!token || (skip_special && m.special_contents.count(*token))) continue;
    if (!m.byte_level_decoder) {  // no decoder: the library joins the tokens with spaces
      if (!first) out += ' ';
      out += *token, first = false;
      continue;
    }
    // Each character back to its byte; a token with any character outside the table keeps its own UTF-8.
    std::string bytes;
    uint32_t cp;
    for (size_t i = 0, n; i < token->size(); i += n) {
      n = utf8_next(*token, i, &cp);
      if (n == 0 || cp >= table.char_byte.size() || table.char_byte[cp] < 0) {
        bytes = *token;
        break;
      }
      bytes += char(table.char_byte[cp]);
    }
    out += bytes;
  }
  return m.byte_level_decoder ? bpe::utf8_lossy(out) : out;
}

int64_t ByteLevelBpe::vocab_size() const { return impl_->size; }

int64_t ByteLevelBpe::token_to_id(const std::string& token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return -1;
}

std::string ByteLevelBpe::id_to_token(int64_t id) const {
  const std::string* token = impl_->token_text(id);
  if (!token) throw TokenizerError(impl_->source + ": id " + std::to_string(id) + " is no token of the vocabulary");
  return *token;
}

bool ByteLevelBpe::is_special(int64_t id) const {
  auto it = impl_->added_by_id.find(id);
  return it != impl_->added_by_id.end() && impl_->added[it->second].special;
}

int64_t ByteLevelBpe::post_processor_bos() const { return impl_->before.empty() ? -1 : impl_->before.front(); }

const std::string& ByteLevelBpe::source() const { return impl_->source; }

}  // namespace mole
