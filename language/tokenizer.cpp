#include "language/tokenizer.h"

#include "language/bpe_tokenizer.h"

#include <tuple>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "core/json_config.h"

namespace mole {
namespace fs = std::filesystem;

namespace {

// "<s>" or {"content": "<s>", ...} (both shapes appear in tokenizer_config.json); "" when absent or null.
std::string token_text(const json& config, const std::string& key, const std::string& where) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) return field<std::string>(*it, "content", where + "." + key);
  throw ConfigError(where + ": field '" + key + "' must be a string or an object with 'content'");
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Feeds the corpus lines to the trainer from memory, so that the corpus path is not written into the model.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return lines_[i_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  const std::vector<std::string>& lines_;
  size_t i_ = 0;
};

json added_token_entry(const std::string& content) {
  return {{"content", content}, {"lstrip", false}, {"normalized", false}, {"rstrip", false},
          {"single_word", false}, {"special", true}};
}

}  // namespace

// ---- loading ---------------------------------------------------------------------------------------------

Tokenizer Tokenizer::load(const std::string& dir_or_file) {
  Tokenizer t;
  fs::path dir;
  fs::path model_path = dir_or_file;
  bool is_folder = fs::is_directory(model_path);
  if (is_folder) {
    dir = model_path;
    model_path = dir / "tokenizer.model";
  }
  t.source_ = model_path.string();
  if (!fs::is_regular_file(model_path) && is_folder && fs::exists(dir / "tokenizer.json"))
    return load_byte_level(dir.string());
  if (!fs::is_regular_file(model_path))
    throw TokenizerError(t.source_ + ": no sentencepiece tokenizer.model there (nor a tokenizer.json)");
  t.sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
  auto status = t.sp_->Load(t.source_);
  if (!status.ok()) throw TokenizerError(t.source_ + ": not a sentencepiece model: " + status.ToString());

  const int64_t n_sp = t.sp_->GetPieceSize();
  t.bos_id_ = t.sp_->bos_id();
  t.eos_id_ = t.sp_->eos_id();
  t.unk_id_ = t.sp_->unk_id();
  // Control pieces (<s>, </s>) and <unk> are matched in text as whole tokens, as LlamaTokenizer's
  // special tokens are; sentencepiece itself would spell them out character by character.
  for (int64_t id = 0; id < n_sp; ++id)
    if (t.sp_->IsControl(id) || t.sp_->IsUnknown(id)) t.split_tokens_.push_back({t.sp_->IdToPiece(id), id});

  // Added tokens: added_tokens.json {content: id} and tokenizer_config.json "added_tokens_decoder"
  // {"id": {"content", "special", "lstrip", "rstrip"}}; where both name a token they must agree.
  std::map<int64_t, AddedToken> added;     // by id
  std::map<std::string, std::string> from;  // content -> the file that named it, for errors
  auto add = [&](AddedToken token, const std::string& where, bool has_flags) {
    auto it = added.find(token.id);
    if (it != added.end() && it->second.content != token.content)
      throw TokenizerError(where + ": id " + std::to_string(token.id) + " is '" + token.content + "' but " +
                           from[it->second.content] + " says '" + it->second.content + "'");
    for (const auto& [id, other] : added)
      if (other.content == token.content && id != token.id)
        throw TokenizerError(where + ": token '" + token.content + "' has id " + std::to_string(token.id) +
                             " but " + from[token.content] + " gives it id " + std::to_string(id));
    if (token.id < 0) throw TokenizerError(where + ": token '" + token.content + "' has a negative id");
    if (token.content.empty()) throw TokenizerError(where + ": an added token has empty content");
    if (it != added.end() && !has_flags) return;  // keep the flags tokenizer_config.json gave
    added[token.id] = token;
    from[token.content] = where;
  };
  json config = json::object();
  std::string config_path;
  if (is_folder) {
    std::string added_path = (dir / "added_tokens.json").string();
    if (fs::exists(added_path)) {
      json j = read_json_file(added_path);
      if (!j.is_object()) throw TokenizerError(added_path + ": expected an object {\"<image>\": 32000, ...}");
      for (const auto& [content, id] : j.items()) {
        if (!id.is_number_integer())
          throw TokenizerError(added_path + ": the id of '" + content + "' is not an integer");
        add({content, id.get<int64_t>()}, added_path, false);
      }
    }
    config_path = (dir / "tokenizer_config.json").string();
    if (fs::exists(config_path)) {
      config = read_json_file(config_path);
      if (!config.is_object()) throw TokenizerError(config_path + ": expected a JSON object");
      auto it = config.find("added_tokens_decoder");
      if (it != config.end() && !it->is_null()) {
        if (!it->is_object()) throw TokenizerError(config_path + ": added_tokens_decoder must be an object");
        for (const auto& [key, entry] : it->items()) {
          std::string where = config_path + ": added_tokens_decoder." + key;
          int64_t id = -1;
          try {
            size_t used = 0;
            id = std::stoll(key, &used);
            if (used != key.size()) id = -1;
          } catch (const std::exception&) {
          }
          if (id < 0) throw TokenizerError(where + ": the key must be a token id");
          if (!entry.is_object()) throw TokenizerError(where + ": expected an object with 'content'");
          AddedToken token{field<std::string>(entry, "content", where), id};
          token.special = field_or<bool>(entry, "special", false, where);
          token.lstrip = field_or<bool>(entry, "lstrip", false, where);
          token.rstrip = field_or<bool>(entry, "rstrip", false, where);
          add(token, config_path, true);
        }
      }
    }
  }

  // Ids below the sentencepiece vocabulary must be its own pieces; the rest follow it without a gap.
  int64_t next_id = n_sp;
  for (auto& [id, token] : added) {
    const std::string& where = from[token.content];
    if (id < n_sp) {
      if (t.sp_->IdToPiece(id) != token.content)
        throw TokenizerError(where + ": token '" + token.content + "' has id " + std::to_string(id) +
                             " but piece " + std::to_string(id) + " of " + t.source_ + " is '" +
                             t.sp_->IdToPiece(id) + "'");
      auto same = std::find_if(t.split_tokens_.begin(), t.split_tokens_.end(),
                               [id = id](const AddedToken& s) { return s.id == id; });  // (C++17: no binding captures)
      if (same != t.split_tokens_.end()) *same = token;
      else t.split_tokens_.push_back(token);  // a normal piece declared as a token: matched whole
      continue;
    }
    if (id != next_id)
      throw TokenizerError(where + ": added token '" + token.content + "' has id " + std::to_string(id) +
                           "; added tokens must take the ids right after the " + std::to_string(n_sp) +
                           " sentencepiece pieces of " + t.source_ + " without a gap (expected " +
                           std::to_string(next_id) + ")");
    if (t.sp_->PieceToId(token.content) != t.unk_id_ || token.content == t.sp_->IdToPiece(t.unk_id_))
      throw TokenizerError(where + ": added token '" + token.content + "' (id " + std::to_string(id) +
                           ") is already piece " + std::to_string(t.sp_->PieceToId(token.content)) + " of " +
                           t.source_);
    t.split_tokens_.push_back(token);
    ++next_id;
  }
  t.n_added_ = next_id - n_sp;

  // Named special tokens from tokenizer_config.json override sentencepiece's ids.
  auto resolve = [&](const std::string& key, int64_t fallback) {
    std::string text = token_text(config, key, config_path);
    if (text.empty()) return fallback;
    int64_t id = t.token_to_id(text);
    if (id < 0) throw TokenizerError(config_path + ": " + key + " '" + text + "' is not in the vocabulary");
    return id;
  };
  t.bos_id_ = resolve("bos_token", t.bos_id_);
  t.eos_id_ = resolve("eos_token", t.eos_id_);
  t.unk_id_ = resolve("unk_token", t.unk_id_);
  int64_t pad = t.token_to_id("<pad>");
  t.pad_id_ = resolve("pad_token", pad >= n_sp ? pad : (t.unk_id_ >= 0 ? t.unk_id_ : t.eos_id_));
  t.image_token_id_ = t.token_to_id("<image>");
  if (t.image_token_id_ >= 0 && t.image_token_id_ < n_sp && !t.sp_->IsControl(t.image_token_id_)) {
    // "<image>" as an ordinary piece would be split by sentencepiece unless declared as an added token.
    bool declared = std::any_of(t.split_tokens_.begin(), t.split_tokens_.end(),
                                [&](const AddedToken& s) { return s.id == t.image_token_id_; });
    if (!declared) t.image_token_id_ = -1;
  }

  // encode_no_prefix encodes anchor + text and drops the anchor's ids; the anchor must be a character that
  // no piece contains, so it can never join the text's first piece.
  for (char c = 1; c < 32 && t.anchor_.empty(); ++c) {
    if (is_space(c)) continue;
    bool used = false;
    for (int64_t id = 0; id < n_sp && !used; ++id)
      used = !t.sp_->IsByte(id) && t.sp_->IdToPiece(id).find(c) != std::string::npos;
    if (!used) t.anchor_ = std::string(1, c);
  }
  if (!t.anchor_.empty()) t.anchor_ids_ = t.encode_plain(t.anchor_, true);
  return t;
}

Tokenizer Tokenizer::load_byte_level(const std::string& dir) {
  Tokenizer t;
  t.bpe_ = std::make_shared<const ByteLevelBpe>(ByteLevelBpe::load(dir + "/tokenizer.json"));
  t.source_ = t.bpe_->source();
  const std::string config_path = dir + "/tokenizer_config.json";
  const json config = fs::exists(config_path) ? read_json_file(config_path) : json::object();
  auto resolve = [&](const std::string& key, int64_t fallback) {
    const std::string text = token_text(config, key, config_path);
    if (text.empty()) return fallback;
    const int64_t id = t.bpe_->token_to_id(text);
    if (id < 0) throw TokenizerError(config_path + ": " + key + " '" + text + "' is not in " + t.source_);
    return id;
  };
  t.bos_id_ = resolve("bos_token", t.bpe_->post_processor_bos());
  t.eos_id_ = resolve("eos_token", -1);
  t.unk_id_ = -1;  // byte-level: every byte has a token
  t.pad_id_ = resolve("pad_token", t.bpe_->token_to_id("<pad>"));
  if (t.eos_id_ < 0) throw TokenizerError(config_path + ": eos_token is needed (the end of an answer)");
  if (t.is_added_token("<image>")) t.image_token_id_ = t.bpe_->token_to_id("<image>");
  return t;
}

// ---- encoding --------------------------------------------------------------------------------------------

std::vector<int64_t> Tokenizer::encode_plain(const std::string& piece, bool prefix) const {
  if (piece.empty()) return {};
  std::vector<int> ids;
  if (prefix) {
    auto status = sp_->Encode(piece, &ids);
    if (!status.ok()) throw TokenizerError(source_ + ": encode failed: " + status.ToString());
    return {ids.begin(), ids.end()};
  }
  if (anchor_.empty())
    throw TokenizerError(source_ + ": every control character occurs in some piece; cannot encode without "
                         "the dummy prefix");
  auto status = sp_->Encode(anchor_ + piece, &ids);
  if (!status.ok()) throw TokenizerError(source_ + ": encode failed: " + status.ToString());
  if (ids.size() < anchor_ids_.size() || !std::equal(anchor_ids_.begin(), anchor_ids_.end(), ids.begin()))
    throw TokenizerError(source_ + ": encoding without the dummy prefix failed (the anchor merged)");
  return {ids.begin() + anchor_ids_.size(), ids.end()};
}

std::vector<int64_t> Tokenizer::encode_impl(const std::string& text, bool prefix_first) const {
  // Split on the added-token strings: at each position the longest one that starts there (HF's Trie.split).
  struct Part {
    std::string text;
    const AddedToken* token = nullptr;
  };
  std::vector<Part> parts;
  size_t start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* best = nullptr;
    for (const auto& s : split_tokens_)
      if (text.compare(i, s.content.size(), s.content) == 0 && (!best || s.content.size() > best->content.size()))
        best = &s;
    if (!best) {
      ++i;
      continue;
    }
    parts.push_back({text.substr(start, i - start)});
    parts.push_back({best->content, best});
    i += best->content.size();
    start = i;
  }
  parts.push_back({text.substr(start)});
  // AddedToken(lstrip / rstrip): whitespace on that side of the token is dropped (PreTrainedTokenizer.tokenize).
  for (size_t k = 0; k < parts.size(); ++k) {
    if (!parts[k].token) continue;
    if (parts[k].token->lstrip && k > 0 && !parts[k - 1].token) {
      auto& left = parts[k - 1].text;
      while (!left.empty() && is_space(left.back())) left.pop_back();
    }
    if (parts[k].token->rstrip && k + 1 < parts.size() && !parts[k + 1].token) {
      auto& right = parts[k + 1].text;
      size_t n = 0;
      while (n < right.size() && is_space(right[n])) ++n;
      right.erase(0, n);
    }
  }
  std::vector<int64_t> ids;
  for (size_t k = 0; k < parts.size(); ++k) {
    if (parts[k].token) {
      ids.push_back(parts[k].token->id);
      continue;
    }
    // Every piece starts a new sentencepiece call with its dummy prefix (legacy=True), except a first piece
    // that continues text encoded elsewhere.
    auto piece_ids = encode_plain(parts[k].text, prefix_first || k > 0);
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  return ids;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int64_t> ids;
  if (add_bos) {
    if (bos_id_ < 0) throw TokenizerError(source_ + ": the tokenizer has no bos token");
    ids.push_back(bos_id_);
  }
  auto rest = bpe_ ? bpe_->encode(text) : encode_impl(text, true);
  ids.insert(ids.end(), rest.begin(), rest.end());
  return ids;
}

std::vector<int64_t> Tokenizer::encode_no_prefix(const std::string& text) const {
  return bpe_ ? bpe_->encode(text) : encode_impl(text, false);
}

// ---- decoding and lookup ---------------------------------------------------------------------------------

int64_t Tokenizer::sp_vocab_size() const { return bpe_ ? bpe_->vocab_size() : sp_->GetPieceSize(); }
int64_t Tokenizer::vocab_size() const { return sp_vocab_size() + n_added_; }

const Tokenizer::AddedToken* Tokenizer::added_by_id(int64_t id) const {
  for (const auto& s : split_tokens_)
    if (s.id == id) return &s;
  return nullptr;
}

nlohmann::json Tokenizer::hf_tokenizer_json() const {
  using nlohmann::json;
  if (bpe_) return read_json_file(source_);  // it is one already
  const int64_t n_sp = sp_vocab_size();
  // vocab: every piece by id; merges: SentencePieceExtractor.extract -> generate_merges(vocab) (no scores): each
  // piece split at every character boundary into two pieces of the vocabulary is a merge, ranked by the piece's id,
  // then the lengths of its halves, ascending; ties keep the order of the halves' ids.
  json vocab = json::object();
  std::map<std::string, int64_t> id_of;
  for (int64_t id = 0; id < n_sp; ++id) {
    vocab[sp_->IdToPiece(int(id))] = id;
    id_of[sp_->IdToPiece(int(id))] = id;
  }
  struct Merge {
    std::string left, right;
    int64_t rank;                // the merged piece's id
    size_t len_left, len_right;  // in characters, as Python's len
  };
  auto n_chars = [](const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  };
  std::vector<Merge> merges;
  for (int64_t id = 0; id < n_sp; ++id) {
    const std::string piece = sp_->IdToPiece(int(id));
    std::vector<Merge> local;
    for (size_t at = 1; at < piece.size(); ++at) {
      if ((static_cast<unsigned char>(piece[at]) & 0xC0) == 0x80) continue;  // inside a UTF-8 character
      const std::string left = piece.substr(0, at), right = piece.substr(at);
      if (id_of.count(left) && id_of.count(right))
        local.push_back({left, right, id, n_chars(left), n_chars(right)});
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      return std::make_pair(id_of[a.left], id_of[a.right]) < std::make_pair(id_of[b.left], id_of[b.right]);
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  // sorted(..., key=(id, len_l, len_r)): ascending, stable
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) {
    return std::make_tuple(a.rank, a.len_left, a.len_right) < std::make_tuple(b.rank, b.len_left, b.len_right);
  });
  json merge_list = json::array();
  for (const Merge& m : merges) merge_list.push_back({m.left, m.right});

  json added = json::array();
  auto added_entry = [](int64_t id, const std::string& content, bool special) {
    return json{{"id", id},        {"content", content}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", special}};
  };
  for (int64_t id = 0; id < n_sp; ++id)
    if (sp_->IsControl(int(id)) || sp_->IsUnknown(int(id))) added.push_back(added_entry(id, sp_->IdToPiece(int(id)), true));
  std::vector<const AddedToken*> extra;
  for (const AddedToken& t : split_tokens_)
    if (t.id >= n_sp) extra.push_back(&t);
  std::sort(extra.begin(), extra.end(), [](const AddedToken* a, const AddedToken* b) { return a->id < b->id; });
  for (const AddedToken* t : extra) added.push_back(added_entry(t->id, t->content, t->special));

  const std::string bos = sp_->IdToPiece(int(bos_id_));
  json single = json::array({json{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}});
  json pair = single;
  pair.push_back({{"SpecialToken", {{"id", bos}, {"type_id", 1}}}});
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}, {"split", false}}},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single", single},
            {"pair", pair},
            {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id_}}, {"tokens", {bos}}}}}}}},
          {"decoder",
           {{"type", "Sequence"},
            {"decoders",
             {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
              {{"type", "ByteFallback"}},
              {{"type", "Fuse"}},
              {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},  // as LlamaConverter leaves it: byte_fallback covers every byte
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", true},
            {"byte_fallback", true},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merge_list}}}};
}

Tokenizer Tokenizer::with_added_tokens(const std::vector<std::string>& contents) const {
  if (bpe_) throw TokenizerError(source_ + ": adding tokens to a tokenizer.json tokenizer is not supported");
  Tokenizer t = *this;
  for (const std::string& content : contents) {
    if (t.is_added_token(content) || t.token_to_id(content) >= 0) continue;
    AddedToken token;
    token.content = content;
    token.id = t.vocab_size();
    t.split_tokens_.push_back(token);
    ++t.n_added_;
    if (content == "<image>") t.image_token_id_ = token.id;
    if (content == "<pad>") t.pad_id_ = token.id;
  }
  return t;
}

void Tokenizer::write_added_tokens(const std::string& dir) const {
  const int64_t n_sp = sp_vocab_size();
  json added = json::object(), decoder = json::object();
  for (const AddedToken& t : split_tokens_)
    if (t.id >= n_sp) {
      added[t.content] = t.id;
      decoder[std::to_string(t.id)] = {{"content", t.content}, {"lstrip", t.lstrip},   {"normalized", false},
                                       {"rstrip", t.rstrip},   {"single_word", false}, {"special", t.special}};
    }
  write_json_file(dir + "/added_tokens.json", added);
  const std::string config_path = dir + "/tokenizer_config.json";
  json config = fs::exists(config_path) ? read_json_file(config_path) : json::object();
  for (const auto& [id, entry] : decoder.items()) config["added_tokens_decoder"][id] = entry;
  const AddedToken* pad = added_by_id(pad_id_);
  if (pad && pad->id >= n_sp) config["pad_token"] = pad->content;
  write_json_file(config_path, config);
  const std::string map_path = dir + "/special_tokens_map.json";
  if (pad && pad->id >= n_sp && fs::exists(map_path)) {
    json map = read_json_file(map_path);
    map["pad_token"] = pad->content;
    write_json_file(map_path, map);
  }
}

bool Tokenizer::is_added_token(const std::string& content) const {
  if (bpe_) {  // split out as one id by encode: an added token
    const int64_t id = bpe_->token_to_id(content);
    return id >= 0 && bpe_->encode(content) == std::vector<int64_t>{id};
  }
  for (const AddedToken& t : split_tokens_)
    if (t.content == content) return true;
  return false;
}

bool Tokenizer::is_special(int64_t id) const {
  if (id == bos_id_ || id == eos_id_ || id == unk_id_ || id == pad_id_) return true;
  if (bpe_) return bpe_->is_special(id);
  if (id >= 0 && id < sp_vocab_size() && sp_->IsControl(id)) return true;
  const AddedToken* token = added_by_id(id);
  return token && token->special;
}

std::string Tokenizer::id_to_piece(int64_t id) const {
  if (bpe_) return bpe_->id_to_token(id);
  if (id >= 0 && id < sp_vocab_size()) return sp_->IdToPiece(id);
  const AddedToken* token = added_by_id(id);
  if (!token)
    throw TokenizerError(source_ + ": id " + std::to_string(id) + " is outside the vocabulary (" +
                         std::to_string(vocab_size()) + " tokens)");
  return token->content;
}

int64_t Tokenizer::token_to_id(const std::string& token) const {
  if (bpe_) return bpe_->token_to_id(token);
  for (const auto& s : split_tokens_)
    if (s.content == token) return s.id;
  int64_t id = sp_->PieceToId(token);
  if (id == unk_id_ && token != sp_->IdToPiece(id)) return -1;
  return id;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  if (bpe_) {
    for (int64_t id : ids)
      if (id < 0 || id >= vocab_size())
        throw TokenizerError(source_ + ": cannot decode id " + std::to_string(id) + ": outside the vocabulary (" +
                             std::to_string(vocab_size()) + " tokens)");
    return bpe_->decode(ids, skip_special);
  }
  std::string out;
  std::vector<int> run;  // ordinary sentencepiece ids, decoded together (byte fallback spans ids)
  auto flush = [&]() {
    if (run.empty()) return;
    std::string text;
    auto status = sp_->Decode(run, &text);
    if (!status.ok()) throw TokenizerError(source_ + ": decode failed: " + status.ToString());
    out += text;
    run.clear();
  };
  const int64_t n_sp = sp_vocab_size();
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size())
      throw TokenizerError(source_ + ": cannot decode id " + std::to_string(id) + ": outside the vocabulary (" +
                           std::to_string(vocab_size()) + " tokens)");
    const AddedToken* token = added_by_id(id);
    bool whole = token || sp_->IsControl(id) || sp_->IsUnknown(id);
    if (!whole && id < n_sp) {
      run.push_back(static_cast<int>(id));
      continue;
    }
    flush();
    if (skip_special && is_special(id)) continue;
    out += token ? token->content : sp_->IdToPiece(id);
  }
  flush();
  return out;
}

// ---- training --------------------------------------------------------------------------------------------

void Tokenizer::train(const std::string& corpus_file, int64_t vocab_size, const std::string& out_dir,
                      const TrainOptions& options) {
  std::ifstream in(corpus_file, std::ios::binary);
  if (!in) throw TokenizerError(corpus_file + ": cannot open the corpus");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.push_back(line);
  }
  if (lines.empty()) throw TokenizerError(corpus_file + ": the corpus has no non-empty line");
  if (vocab_size <= 0) throw TokenizerError("train: vocab_size must be > 0");
  if (options.model_type != "bpe" && options.model_type != "unigram")
    throw TokenizerError("train: model_type '" + options.model_type + "' is not supported (bpe, unigram)");

  // LLaMA's trainer_spec and normalizer_spec (see TrainOptions); values are sentencepiece's flag syntax.
  auto num = [](auto v) {
    std::ostringstream s;
    s << v;
    return s.str();
  };
  std::unordered_map<std::string, std::string> spec = {
      {"model_type", options.model_type},
      {"vocab_size", num(vocab_size)},
      {"character_coverage", num(options.character_coverage)},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"split_by_unicode_script", "true"},
      {"split_by_whitespace", "true"},
      {"split_by_number", "true"},
      {"treat_whitespace_as_suffix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", num(options.max_sentence_length)},
      {"max_sentencepiece_length", num(options.max_sentencepiece_length)},
      {"input_sentence_size", num(options.input_sentence_size)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", "1"},
      {"vocabulary_output_piece_score", "true"},
      {"hard_vocab_limit", "true"},
      {"self_test_sample_size", "0"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "true"},
      {"remove_extra_whitespaces", "false"},
      {"minloglevel", options.verbose ? "0" : "1"},
  };
  sentencepiece::SetRandomGeneratorSeed(options.seed);
  LineIterator it(lines);
  std::string model;
  auto status = sentencepiece::SentencePieceTrainer::Train(spec, &it, &model);
  if (!status.ok())
    throw TokenizerError(corpus_file + ": sentencepiece training failed: " + status.ToString());

  fs::create_directories(out_dir);
  fs::path dir = out_dir;
  std::string model_path = (dir / "tokenizer.model").string();
  {
    std::ofstream out(model_path + ".tmp", std::ios::binary | std::ios::trunc);
    out.write(model.data(), static_cast<std::streamsize>(model.size()));
    if (!out.flush()) throw TokenizerError(model_path + ": write failed");
  }
  fs::rename(model_path + ".tmp", model_path);

  sentencepiece::SentencePieceProcessor sp;
  status = sp.LoadFromSerializedProto(model);
  if (!status.ok()) throw TokenizerError(model_path + ": the trained model does not load: " + status.ToString());
  const int64_t n_sp = sp.GetPieceSize();
  const std::string unk = sp.IdToPiece(sp.unk_id()), bos = sp.IdToPiece(sp.bos_id()), eos = sp.IdToPiece(sp.eos_id());

  // <image> and <pad> after the sentencepiece pieces, as llava-hf's checkpoints have them.
  write_json_file((dir / "added_tokens.json").string(), {{"<image>", n_sp}, {"<pad>", n_sp + 1}});
  json decoder = json::object();
  decoder[std::to_string(sp.unk_id())] = added_token_entry(unk);
  decoder[std::to_string(sp.bos_id())] = added_token_entry(bos);
  decoder[std::to_string(sp.eos_id())] = added_token_entry(eos);
  decoder[std::to_string(n_sp)] = added_token_entry("<image>");
  decoder[std::to_string(n_sp + 1)] = added_token_entry("<pad>");
  json config = {{"tokenizer_class", "LlamaTokenizer"},
                 {"add_bos_token", true},
                 {"add_eos_token", false},
                 {"added_tokens_decoder", decoder},
                 {"bos_token", bos},
                 {"eos_token", eos},
                 {"unk_token", unk},
                 {"pad_token", "<pad>"},
                 {"legacy", true},
                 {"clean_up_tokenization_spaces", false},
                 {"model_max_length", options.model_max_length},
                 {"padding_side", "right"},
                 {"sp_model_kwargs", json::object()},
                 {"use_default_system_prompt", false}};
  write_json_file((dir / "tokenizer_config.json").string(), config);
  write_json_file((dir / "special_tokens_map.json").string(),
                  {{"bos_token", bos}, {"eos_token", eos}, {"unk_token", unk}, {"pad_token", "<pad>"}});
}

}  // namespace mole
