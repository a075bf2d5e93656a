// Tokenizer: training (LLaMA's settings, deterministic), loading Hugging Face folders and their added tokens,
// encoding as transformers' legacy LlamaTokenizer does, decoding, and errors that name the file.
// The [reference] case compares the ids with transformers itself (tests/reference/check_tokenizer.py).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/json_config.h"
#include "language/conversation.h"
#include "language/tokenizer.h"
#include "tests/language/tiny_tokenizer.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Matchers::Contains;
using Ids = std::vector<int64_t>;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A copy of the tiny tokenizer folder with some files replaced, for the error cases.
std::string folder_with(const std::string& tag, const std::vector<std::pair<std::string, std::string>>& files) {
  std::string dir = test::scratch_dir(tag);
  fs::copy_file(fs::path(test::tiny_tokenizer_dir()) / "tokenizer.model", fs::path(dir) / "tokenizer.model");
  for (const auto& [name, text] : files) write_text(fs::path(dir) / name, text);
  return dir;
}

}  // namespace

TEST_CASE("train writes a LLaMA-style folder with <image> and <pad> after the vocabulary",
          "[unit][language][tokenizer]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t n = test::kTinyVocab;
  CHECK(tok.sp_vocab_size() == n);
  CHECK(tok.vocab_size() == n + 2);
  CHECK(tok.unk_id() == 0);
  CHECK(tok.bos_id() == 1);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.image_token_id() == n);
  CHECK(tok.pad_id() == n + 1);
  CHECK(tok.id_to_piece(0) == "<unk>");
  CHECK(tok.id_to_piece(1) == "<s>");
  CHECK(tok.id_to_piece(2) == "</s>");
  CHECK(tok.id_to_piece(3) == "<0x00>");  // byte fallback pieces follow the specials, as in LLaMA
  CHECK(tok.id_to_piece(n) == "<image>");
  CHECK(tok.id_to_piece(n + 1) == "<pad>");
  CHECK(tok.token_to_id("<pad>") == n + 1);
  CHECK(tok.token_to_id("no such piece") == -1);
  CHECK(tok.is_special(tok.image_token_id()));
  CHECK_THROWS_WITH(tok.id_to_piece(n + 2), Contains("outside the vocabulary"));

  fs::path dir = test::tiny_tokenizer_dir();
  json added = read_json_file((dir / "added_tokens.json").string());
  CHECK(added == json({{"<image>", n}, {"<pad>", n + 1}}));
  json config = read_json_file((dir / "tokenizer_config.json").string());
  CHECK(config["tokenizer_class"] == "LlamaTokenizer");
  CHECK(config["legacy"] == true);
  CHECK(config["add_bos_token"] == true);
  CHECK(config["add_eos_token"] == false);
  CHECK(config["bos_token"] == "<s>");
  CHECK(config["eos_token"] == "</s>");
  CHECK(config["unk_token"] == "<unk>");
  CHECK(config["pad_token"] == "<pad>");
  CHECK(config["added_tokens_decoder"][std::to_string(n)]["content"] == "<image>");
  CHECK(config["added_tokens_decoder"][std::to_string(n)]["special"] == true);
  CHECK(config["model_max_length"] == 2048);
}

TEST_CASE("training twice on the same corpus gives byte-identical files", "[unit][language][tokenizer]") {
  // Two corpus files with the same lines in different folders: the path must not leak into the model.
  std::string a = test::scratch_dir("tokenizer_train_a"), b = test::scratch_dir("tokenizer_train_b");
  test::write_tiny_corpus(a + "/corpus.txt");
  test::write_tiny_corpus(b + "/lines.txt");
  Tokenizer::train(a + "/corpus.txt", test::kTinyVocab, a + "/tok");
  Tokenizer::train(b + "/lines.txt", test::kTinyVocab, b + "/tok");
  for (const char* name : {"tokenizer.model", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    INFO(name);
    std::string first = read_bytes(fs::path(a) / "tok" / name);
    CHECK(!first.empty());
    CHECK(first == read_bytes(fs::path(b) / "tok" / name));
  }
  // And the cached folder the other tests use is the same model.
  CHECK(read_bytes(fs::path(a) / "tok/tokenizer.model") ==
        read_bytes(fs::path(test::tiny_tokenizer_dir()) / "tokenizer.model"));
}

TEST_CASE("decode(encode(x)) == x", "[unit][language][tokenizer]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const std::vector<std::string> texts = {
      "The red circle is next to the blue square.",
      "There are 1234567 stars.",
      "  two leading spaces, two  inside and trailing  ",
      "tabs\tand\nnew\n\nlines\n",
      "unicode: café, naïve, 東京, emoji 🙂 (byte fallback)",
      "USER: What colour is the star? ASSISTANT: The star is green.",
      "",
      " ",
  };
  for (const auto& text : texts) {
    INFO("text: [" << text << "]");
    CHECK(tok.decode(tok.encode(text, false), false) == text);
    CHECK(tok.decode(tok.encode(text, true), true) == text);  // BOS skipped
  }
  // With special tokens inside: written back as their text when not skipped.
  std::string text = "<image>\nWhat is it?</s>USER: hi<pad>";
  CHECK(tok.decode(tok.encode(text, false), false) == text);
  CHECK(tok.decode(tok.encode(text, true), true) == "\nWhat is it?USER: hi");
  CHECK(tok.decode(tok.encode(text, true), false) == "<s>" + text);
  CHECK_THROWS_WITH(tok.decode({-100}), Contains("outside the vocabulary"));
  CHECK_THROWS_WITH(tok.decode({tok.vocab_size()}), Contains("outside the vocabulary"));
}

TEST_CASE("encode splits on added tokens first and prefixes every piece (legacy LlamaTokenizer)",
          "[unit][language][tokenizer]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t img = tok.image_token_id(), pad = tok.pad_id(), bos = tok.bos_id(), eos = tok.eos_id();
  const int64_t space = tok.token_to_id("▁");
  REQUIRE(space >= 0);

  // Added and special tokens are single ids; no dummy prefix before a token that starts the text.
  CHECK(tok.encode("<image>", false) == Ids{img});
  CHECK(tok.encode("<image>", true) == Ids{bos, img});
  CHECK(tok.encode("<image><image><pad></s><s><unk>", false) == Ids{img, img, pad, eos, bos, tok.unk_id()});
  // Text after a special token is a new sentencepiece call with its dummy prefix "▁" (legacy=True):
  // "</s>USER" is [eos, ▁USER...], exactly as "USER" alone; "<image>\nWhat" starts with a lone "▁".
  CHECK(tok.encode("</s>USER: hi", false) == cat({{eos}, tok.encode("USER: hi", false)}));
  CHECK(tok.encode("<image>\nWhat", false) == cat({{img}, tok.encode("\nWhat", false)}));
  CHECK(tok.encode("\nWhat", false).front() == space);
  CHECK(tok.id_to_piece(tok.encode("\nWhat", false)[1]) == "<0x0A>");  // byte fallback for "\n"
  CHECK(tok.encode("a<image>b", false) == cat({tok.encode("a", false), {img}, tok.encode("b", false)}));
  // " b" after a token keeps both the dummy prefix and its own space: "▁", "▁b" (transformers 5's
  // tokenizers backend gives "▁b" here: see the [reference] case).
  CHECK(tok.encode("<image> b", false) == cat({{img, space}, tok.encode("b", false)}));

  // split_digits: numbers are one id per digit.
  Ids digits = tok.encode("2024", false);
  REQUIRE(digits.size() == 5);
  CHECK(digits[0] == space);
  for (int i = 1; i < 5; ++i) CHECK(tok.id_to_piece(digits[i]).size() == 1);
  // Byte fallback: a character outside the vocabulary is its UTF-8 bytes.
  Ids kanji = tok.encode("東", false);
  CHECK(kanji == Ids{space, tok.token_to_id("<0xE6>"), tok.token_to_id("<0x9D>"), tok.token_to_id("<0xB1>")});

  // encode_no_prefix continues a string: sentencepiece never joins pieces across a space.
  for (std::string head : {"ASSISTANT:", "USER: What colour is the star? ASSISTANT:", "[/INST]"})
    for (std::string tail : {" The star is green.", "  two spaces", " ", " 42", " </s>x", " \nnew line"}) {
      INFO("[" << head << "] + [" << tail << "]");
      CHECK(tok.encode(head + tail, false) == cat({tok.encode(head, false), tok.encode_no_prefix(tail)}));
    }
  CHECK(tok.encode_no_prefix("") == Ids{});
  CHECK(tok.encode_no_prefix(" ") == Ids{space});
  CHECK(tok.encode_no_prefix(" The star") == tok.encode("The star", false));  // the dummy prefix is that space
  CHECK(tok.encode_no_prefix("red") != tok.encode("red", false));
}

TEST_CASE("load reads Hugging Face folders: added_tokens.json, tokenizer_config.json, or a bare model",
          "[unit][language][tokenizer]") {
  const int64_t n = test::kTinyVocab;
  const std::string model = (fs::path(test::tiny_tokenizer_dir()) / "tokenizer.model").string();

  SECTION("a bare tokenizer.model: no added tokens, pad falls back to unk") {
    Tokenizer tok = Tokenizer::load(model);
    CHECK(tok.vocab_size() == n);
    CHECK(tok.image_token_id() == -1);
    CHECK(tok.pad_id() == tok.unk_id());
    CHECK(tok.source() == model);
    // "<image>" is then ordinary text; </s> is still matched whole.
    CHECK(tok.encode("<image>", false).size() > 1);
    CHECK(tok.encode("</s>", false) == Ids{2});
  }
  SECTION("only added_tokens.json (llava-hf order: <image> then <pad>)") {
    std::string dir = folder_with("tok_added_only", {{"added_tokens.json", json({{"<image>", n}, {"<pad>", n + 1}}).dump()}});
    Tokenizer tok = Tokenizer::load(dir);
    CHECK(tok.vocab_size() == n + 2);
    CHECK(tok.image_token_id() == n);
    CHECK(tok.pad_id() == n + 1);
  }
  SECTION("only tokenizer_config.json with added_tokens_decoder; no <pad>: pad is unk") {
    json config = {{"tokenizer_class", "LlamaTokenizer"},
                   {"bos_token", {{"content", "<s>"}, {"special", true}}},  // the object form of older configs
                   {"eos_token", "</s>"},
                   {"added_tokens_decoder",
                    {{"0", {{"content", "<unk>"}, {"special", true}}},
                     {"2", {{"content", "</s>"}, {"special", true}}},
                     {std::to_string(n), {{"content", "<image>"}, {"special", true}}}}}};
    std::string dir = folder_with("tok_config_only", {{"tokenizer_config.json", config.dump()}});
    Tokenizer tok = Tokenizer::load(dir);
    CHECK(tok.vocab_size() == n + 1);
    CHECK(tok.image_token_id() == n);
    CHECK(tok.pad_id() == 0);
    CHECK(tok.bos_id() == 1);
    CHECK(tok.encode("x<image>", false).back() == n);
  }
  SECTION("a non-special added token is kept by decode(skip_special)") {
    json config = {{"added_tokens_decoder", {{std::to_string(n), {{"content", "<obj>"}, {"special", false}}}}}};
    Tokenizer tok = Tokenizer::load(folder_with("tok_nonspecial", {{"tokenizer_config.json", config.dump()}}));
    CHECK(tok.decode(tok.encode("a<obj>", true), true) == "a<obj>");
    CHECK(tok.image_token_id() == -1);
  }
  SECTION("rstrip / lstrip added tokens eat the whitespace beside them, as HF's AddedToken") {
    json config = {{"added_tokens_decoder",
                    {{std::to_string(n), {{"content", "<image>"}, {"special", true}, {"rstrip", true}, {"lstrip", true}}}}}};
    Tokenizer tok = Tokenizer::load(folder_with("tok_strip", {{"tokenizer_config.json", config.dump()}}));
    CHECK(tok.encode("red  <image>  blue", false) ==
          cat({tok.encode("red", false), {n}, tok.encode("blue", false)}));
  }
}

TEST_CASE("tokenizer errors name the file", "[unit][language][tokenizer]") {
  const int64_t n = test::kTinyVocab;
  SECTION("missing folder or model") {
    std::string dir = test::scratch_dir("tok_missing");
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains(dir + "/tokenizer.model") && Contains("no sentencepiece"));
    CHECK_THROWS_AS(Tokenizer::load(dir + "/nothing.model"), TokenizerError);
  }
  SECTION("not a sentencepiece model") {
    std::string dir = test::scratch_dir("tok_garbage");
    write_text(fs::path(dir) / "tokenizer.model", "this is not a protobuf");
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains(dir + "/tokenizer.model") && Contains("not a sentencepiece"));
  }
  SECTION("a gap after the sentencepiece vocabulary") {
    std::string dir = folder_with("tok_gap", {{"added_tokens.json", json({{"<image>", n + 1}}).dump()}});
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains(dir + "/added_tokens.json") && Contains("without a gap") &&
                                                Contains("<image>"));
  }
  SECTION("added_tokens.json and tokenizer_config.json disagree") {
    json config = {{"added_tokens_decoder", {{std::to_string(n), {{"content", "<pad>"}}}}}};
    std::string dir = folder_with("tok_disagree", {{"added_tokens.json", json({{"<image>", n}}).dump()},
                                                   {"tokenizer_config.json", config.dump()}});
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains("tokenizer_config.json") && Contains("added_tokens.json"));
  }
  SECTION("an id below the vocabulary that is another piece") {
    json config = {{"added_tokens_decoder", {{"5", {{"content", "<image>"}}}}}};
    std::string dir = folder_with("tok_low_id", {{"tokenizer_config.json", config.dump()}});
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains(dir + "/tokenizer_config.json") && Contains("piece 5"));
  }
  SECTION("malformed JSON and unknown special tokens") {
    std::string dir = folder_with("tok_bad_json", {{"added_tokens.json", "{\"<image>\": "}});
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains(dir + "/added_tokens.json"));
    dir = folder_with("tok_bad_pad", {{"tokenizer_config.json", json({{"pad_token", "[PAD]"}}).dump()}});
    CHECK_THROWS_WITH(Tokenizer::load(dir), Contains(dir + "/tokenizer_config.json") && Contains("[PAD]"));
  }
  SECTION("training errors") {
    std::string dir = test::scratch_dir("tok_train_errors");
    CHECK_THROWS_WITH(Tokenizer::train(dir + "/missing.txt", 300, dir + "/out"), Contains(dir + "/missing.txt"));
    write_text(fs::path(dir) / "empty.txt", "\n\n");
    CHECK_THROWS_WITH(Tokenizer::train(dir + "/empty.txt", 300, dir + "/out"), Contains("no non-empty line"));
    test::write_tiny_corpus(dir + "/corpus.txt");
    CHECK_THROWS_WITH(Tokenizer::train(dir + "/corpus.txt", 100, dir + "/out"),
                      Contains(dir + "/corpus.txt") && Contains("vocab"));
  }
}

TEST_CASE("mole train-tokenizer writes a folder that loads", "[unit][language][tokenizer]") {
  std::string dir = test::scratch_dir("cmd_train_tokenizer");
  test::write_tiny_corpus(dir + "/corpus.txt");
  std::string out;
  int rc = test::run_command(test::mole_bin() + " train-tokenizer --corpus " + dir + "/corpus.txt --vocab-size " +
                                 std::to_string(test::kTinyVocab) + " --out " + dir + "/tok",
                             &out);
  INFO(out);
  REQUIRE(rc == 0);
  CHECK(read_bytes(fs::path(dir) / "tok/tokenizer.model") ==
        read_bytes(fs::path(test::tiny_tokenizer_dir()) / "tokenizer.model"));
  CHECK(Tokenizer::load(dir + "/tok").vocab_size() == test::kTinyVocab + 2);
  CHECK(test::run_command(test::mole_bin() + " train-tokenizer --corpus " + dir + "/nothing.txt --vocab-size 300 --out " +
                              dir + "/tok2",
                          &out) == 1);
  CHECK_THAT(out, Contains(dir + "/nothing.txt"));
}

// transformers itself on the folder mole wrote. Two tokenizers there:
//  - "slow": the sentencepiece backend, transformers 4's slow LlamaTokenizer algorithm with legacy=True (what
//    LLaVA-1.5 trains with: use_fast=False). mole must equal it on every string.
//  - "fast": transformers 5's LlamaTokenizer (the tokenizers library, Metaspace prepend_scheme "always").
//    Its one difference: a piece of text that already starts with a space gets no extra dummy prefix
//    (" A" -> "▁A", where sentencepiece makes "▁▁A" -> "▁", "▁A"). The strings below that have such a piece
//    carry the ids the fast tokenizer gives, written by hand; all others must be equal.
TEST_CASE("encode matches transformers' LlamaTokenizer (legacy) on a mole-trained folder",
          "[reference][language][tokenizer]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t bos = tok.bos_id(), eos = tok.eos_id(), img = tok.image_token_id();
  auto enc = [&](const std::string& s) { return tok.encode(s, false); };
  struct Case {
    Case(std::string text, Ids fast = {}) : text(std::move(text)), fast(std::move(fast)) {}
    std::string text;
    Ids fast;  // empty: the same as mole
  };
  std::vector<Case> cases = {
      {"The red circle is next to the blue square."},
      {"There are 1234567 stars, 3.5 cubes and 0 rings!"},
      {"tabs\tand\nnew\n\nlines\n"},
      {"unicode: café, naïve, 東京, emoji 🙂"},
      {"<image>\nWhat colour is the star?"},
      {"What colour is the star?\n<image>"},
      {"a<image>b<pad>c</s>d<s>e<unk>f"},
      {"USER: hi ASSISTANT: The star is green.</s>USER: and? ASSISTANT: red</s>"},
      {"[INST] <<SYS>>\nYou are a helpful language and vision assistant.\n<</SYS>>\n\n<image>\nHow many? [/INST] 3 </s><s>[INST] more [/INST] no </s>"},
      {"x</s>"},
      {"trailing space "},
      {""},
      {"\n"},
      // Pieces that start with a space (the start of the text, or right after a special token):
      {" A cat.", cat({{bos}, tok.encode_no_prefix(" A cat.")})},
      {"  two spaces", cat({{bos}, tok.encode_no_prefix("  two spaces")})},
      {" ", {bos, tok.token_to_id("▁")}},
      {"x</s> y", cat({{bos}, enc("x"), {eos}, tok.encode_no_prefix(" y")})},
      {"<image> What is it?", cat({{bos, img}, tok.encode_no_prefix(" What is it?")})},
  };
  // Whole conversations as LLaVA's templates lay them out (one id per image here).
  const std::vector<std::vector<Turn>> conversations = {
      {{"human", "What colour is the star?\n<image>"}, {"gpt", "The star is green."},
       {"human", "And the cube?"}, {"gpt", "Red."}},
      {{"human", "How many rings?"}, {"gpt", "There are 12 rings."}},
  };
  std::vector<Ids> conversation_ids;
  for (Template t : {Template::kVicunaV1, Template::kLlavaLlama2, Template::kPlain})
    for (const auto& turns : conversations) {
      if (t == Template::kPlain && turns.size() != 2) continue;
      cases.push_back({prompt_text(turns, t)});
      conversation_ids.push_back(tokenize_conversation(turns, tok, t, 1, 0).input_ids);
    }

  std::string dir = test::scratch_dir("tokenizer_reference");
  json strings = json::array();
  for (const auto& c : cases) strings.push_back(c.text);
  write_json_file(dir + "/strings.json", strings);
  std::string out;
  int rc = test::run_command(std::string(MOLE_PYTHON) + " " + test::source_dir() +
                                 "/tests/reference/check_tokenizer.py --tokenizer " + test::tiny_tokenizer_dir() +
                                 " --strings " + dir + "/strings.json --out " + dir + "/ids.json",
                             &out);
  INFO(out);
  REQUIRE(rc == 0);
  json ref = read_json_file(dir + "/ids.json");
  INFO("transformers " << ref["transformers"].get<std::string>());
  CHECK(ref["vocab_size"] == tok.vocab_size());
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("string " << i << ": [" << cases[i].text << "]");
    Ids mole_ids = tok.encode(cases[i].text, true);
    CHECK(ref["slow"][i].get<Ids>() == mole_ids);
    CHECK(ref["fast"][i].get<Ids>() == (cases[i].fast.empty() ? mole_ids : cases[i].fast));
    if (!cases[i].fast.empty()) CHECK(cases[i].fast != mole_ids);  // the difference is real
    // decode agrees on text without special tokens that does not start with a space (see tokenizer.h).
    const std::string& text = cases[i].text;
    if (text.find('<') == std::string::npos && (text.empty() || text[0] != ' '))
      CHECK(ref["decode_fast"][i].get<std::string>() == tok.decode(mole_ids, true));
  }
  // The templates' segment-by-segment ids are what transformers makes of the whole prompt string.
  size_t first = cases.size() - conversation_ids.size();
  for (size_t k = 0; k < conversation_ids.size(); ++k) {
    INFO("conversation prompt: [" << cases[first + k].text << "]");
    CHECK(ref["slow"][first + k].get<Ids>() == conversation_ids[k]);
    CHECK(ref["fast"][first + k].get<Ids>() == conversation_ids[k]);
  }
}
