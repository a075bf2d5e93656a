// ByteLevelBpe (language/bpe_tokenizer.h): Hugging Face tokenizer.json byte-level BPE.
// [reference]: the tokenizer.json files and the `tokenizers` library's ids that
//   tests/reference/make_bpe_reference.py wrote into build/ref/bpe (Llama-3, Qwen2, Mistral-Nemo and GPT-2 style):
//   every text must give the library's pre-tokens and ids exactly, with and without the post-processor, and
//   decode must give the library's strings.
// [unit]: hand-written tiny tokenizer.json files: a BPE merge order worked out by hand (and checked once against
//   the library), and the errors for what is not supported, which name the file and the key.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/json_config.h"
#include "language/bpe_tokenizer.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Matchers::Contains;
using Ids = std::vector<int64_t>;
namespace fs = std::filesystem;

namespace {

// A tiny byte-level BPE: merges in rank order b+c, a+b, a+bc, c+d, a+a; "dd" is in the vocabulary but no merge
// builds it (only ignore_merges finds it); <eos> an added special token that the template puts on both sides.
json tiny_tokenizer() {
  return json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 11, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<eos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<eos>", "type_id": 0}}],
      "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
      "special_tokens": {"<eos>": {"id": "<eos>", "ids": [11], "tokens": ["<eos>"]}}},
    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
              "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "ab": 4, "bc": 5, "abc": 6, "cd": 7, "Ġ": 8, "aa": 9, "dd": 10},
              "merges": [["b", "c"], ["a", "b"], ["a", "bc"], ["c", "d"], ["a", "a"]]}
  })");
}

std::string write_tokenizer(const std::string& dir, const std::string& name, const json& j) {
  std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << j.dump();
  return path;
}

// "[1, 2]" for messages.
std::string show(const Ids& ids) { return json(ids).dump(); }

}  // namespace

TEST_CASE("BPE merges lowest rank first, leftmost on ties (ignore_merges, the template, decode)",
          "[unit][language][tokenizer]") {
  std::string dir = test::scratch_dir("bpe_tiny");
  ByteLevelBpe tok = ByteLevelBpe::load(write_tokenizer(dir, "tokenizer.json", tiny_tokenizer()));
  // "abcd": b+c (rank 0) first, so a+b (rank 1) never applies; then a+bc -> abc; c+d lost its c: [abc, d].
  // Merging left to right instead would give [ab, cd] = [4, 7].
  CHECK(tok.encode("abcd") == Ids{6, 3});
  CHECK(tok.encode("aaa") == Ids{9, 0});       // a+a at position 0 before position 1
  CHECK(tok.encode("dd") == Ids{10});          // ignore_merges: the whole pre-token is in the vocabulary
  CHECK(tok.encode("ddd") == Ids{3, 3, 3});    // not in the vocabulary, and no merge
  CHECK(tok.encode("ab c") == Ids{4, 8, 2});   // GPT-2's regex: "ab", " c"; the space is "Ġ"
  CHECK(tok.encode("abz") == Ids{4});          // 'z' has no id and no unk_token: dropped, as the library does
  CHECK(tok.encode("ab<eos>cd") == Ids{4, 11, 7});
  CHECK(tok.encode("").empty());
  CHECK(tok.encode_with_post_processor("abcd") == Ids{11, 6, 3, 11});
  CHECK(tok.encode_with_post_processor("") == Ids{11, 11});
  CHECK(tok.post_processor_bos() == 11);
  CHECK(tok.decode({6, 3, 8, 11, 2}, false) == "abcd <eos>c");
  CHECK(tok.decode({6, 3, 8, 11, 2}, true) == "abcd c");
  CHECK(tok.decode({6, 99, -1, 3}, false) == "abcd");  // unknown ids are dropped
  CHECK(tok.vocab_size() == 12);
  CHECK(tok.token_to_id("<eos>") == 11);
  CHECK(tok.token_to_id("abc") == 6);
  CHECK(tok.token_to_id("zz") == -1);
  CHECK(tok.id_to_token(8) == "Ġ");
  CHECK(tok.is_special(11));
  CHECK_FALSE(tok.is_special(6));
  CHECK_THROWS_WITH(tok.id_to_token(12), Contains("is no token"));
  CHECK_THROWS_WITH(tok.encode("a\xC3(b"), Contains("not valid UTF-8"));

  json plain = tiny_tokenizer();
  plain["model"]["ignore_merges"] = false;
  CHECK(ByteLevelBpe::load(write_tokenizer(dir, "plain.json", plain)).encode("dd") == Ids{3, 3});
  // The legacy "a b" form of merges gives the same model.
  json legacy = tiny_tokenizer();
  legacy["model"]["merges"] = {"#version: 0.2", "b c", "a b", "a bc", "c d", "a a"};
  CHECK(ByteLevelBpe::load(write_tokenizer(dir, "legacy.json", legacy)).encode("abcd aaa") == Ids{6, 3, 8, 9, 0});
}

TEST_CASE("tokenizer.json errors name the file and the key", "[unit][language][tokenizer]") {
  std::string dir = test::scratch_dir("bpe_errors");
  struct Case {
    std::string name;
    std::function<void(json&)> edit;
    std::string key, says;
  };
  const std::vector<Case> cases = {
      {"pre_tokenizer_type", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; },
       "pre_tokenizer.type", "'Whitespace' is not supported"},
      {"pre_tokenizer_null", [](json& j) { j["pre_tokenizer"] = nullptr; }, "pre_tokenizer", "null is not supported"},
      {"split_behavior",
       [](json& j) {
         j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false},
             {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
       },
       "pre_tokenizer.pretokenizers[0].behavior", "'Removed' is not supported"},
      {"split_anchor",
       [](json& j) {
         j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "^\\s+"}, "behavior": "Isolated", "invert": false},
             {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
       },
       "pre_tokenizer.pretokenizers[0].pattern.Regex", "the anchor ^"},
      {"split_word_escape",
       [](json& j) {
         j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false},
             {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
       },
       "pre_tokenizer.pretokenizers[0].pattern.Regex", "the escape \\w"},
      {"split_not_space_in_class",
       [](json& j) {
         j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "[\\S\\d]+"}, "behavior": "Isolated", "invert": false},
             {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
       },
       "pre_tokenizer.pretokenizers[0].pattern.Regex", "\\S inside a class at offset 1"},
      {"split_empty_match",
       [](json& j) {
         j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": "a*"}, "behavior": "Isolated", "invert": false},
             {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
       },
       "pre_tokenizer.pretokenizers[0].pattern.Regex", "empty string"},
      {"bad_merge", [](json& j) { j["model"]["merges"] = {"b c", "a b c"}; }, "model.merges[1]",
       "not two tokens separated by one space"},
      {"merge_not_in_vocab", [](json& j) { j["model"]["merges"][3] = {"c", "q"}; }, "model.merges[3]",
       "'q' is not in model.vocab"},
      {"merge_result_not_in_vocab", [](json& j) { j["model"]["merges"][0] = {"d", "a"}; }, "model.merges[0]",
       "'da' is not in model.vocab"},
      {"missing_vocab", [](json& j) { j["model"].erase("vocab"); }, "model.vocab", "missing"},
      {"duplicate_vocab_id", [](json& j) { j["model"]["vocab"]["zz"] = 3; }, "model.vocab", "id 3 is given to both"},
      {"vocab_id_gap", [](json& j) { j["model"]["vocab"]["zz"] = 40; }, "model.vocab[\"zz\"]",
       "40 is not below the number of entries (12)"},
      {"model_type", [](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type", "only BPE"},
      // Both act only on a byte without an id (the tiny vocabulary has few); with all 256 they are accepted (nemo).
      {"byte_fallback", [](json& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback",
       "only when every byte has its character in model.vocab; byte 0x00 ('Ā') has none"},
      {"unk_token", [](json& j) { j["model"]["unk_token"] = "a"; }, "model.unk_token", "not supported"},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout", "not supported"},
      {"normalizer", [](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "normalizer.type", "only null or NFC"},
      {"decoder", [](json& j) { j["decoder"] = {{"type", "Metaspace"}}; }, "decoder.type", "only null or ByteLevel"},
      {"post_processor", [](json& j) { j["post_processor"] = {{"type", "RobertaProcessing"}}; },
       "post_processor.type", "'RobertaProcessing' is not supported"},
      {"template_missing_special",
       [](json& j) { j["post_processor"]["special_tokens"] = json::object(); }, "post_processor.special_tokens",
       "'<eos>' (used in \"single\") missing"},
      {"single_word", [](json& j) { j["added_tokens"][0]["single_word"] = true; }, "added_tokens[0].single_word",
       "not supported"},
      {"added_id", [](json& j) { j["added_tokens"][0]["id"] = 20; }, "added_tokens[0].id",
       "the tokenizers library gives it 11"},
      {"added_missing_flag", [](json& j) { j["added_tokens"][0].erase("special"); }, "added_tokens[0].special",
       "missing"},
      {"unknown_key", [](json& j) { j["model"]["cache"] = 10; }, "model.cache", "unknown key"},
      {"truncation", [](json& j) { j["truncation"] = {{"max_length", 8}}; }, "truncation", "not supported"},
  };
  for (const Case& c : cases) {
    json j = tiny_tokenizer();
    c.edit(j);
    const std::string path = write_tokenizer(dir, c.name + ".json", j);
    INFO(c.name);
    CHECK_THROWS_WITH(ByteLevelBpe::load(path), Contains(path + ": " + c.key) && Contains(c.says));
  }
  CHECK_THROWS_WITH(ByteLevelBpe::load(dir + "/absent.json"), Contains(dir + "/absent.json: cannot open"));
  std::ofstream(dir + "/broken.json") << "{\"model\": ";
  CHECK_THROWS_WITH(ByteLevelBpe::load(dir + "/broken.json"), Contains("broken.json: not valid JSON"));
}

// Every text of each tokenizer: the pre-tokens (the regexes' pieces), ids without and with the post-processor,
// decode with and without special tokens, partial id lists (cut inside characters, unknown ids), and the
// vocabulary itself. 0 differences.
TEST_CASE("ByteLevelBpe gives the tokenizers library's ids (Llama-3, Qwen2, Mistral-Nemo, GPT-2 style files)",
          "[reference][language][tokenizer]") {
  size_t n_texts = 0;
  for (const char* name : {"llama3", "qwen2", "nemo", "gpt2", "gpt2_prefix"}) {
    const std::string dir = test::ref_dir() + "/bpe/" + name;
    const ByteLevelBpe tok = ByteLevelBpe::load(dir + "/tokenizer.json");
    const json ref = read_json_file(dir + "/expected.json");
    INFO(name << " (tokenizers " << ref["tokenizers"].get<std::string>() << ")");
    CHECK(tok.vocab_size() == ref["vocab_size"].get<int64_t>());
    CHECK(tok.post_processor_bos() == ref["post_processor_bos"].get<int64_t>());

    const json& texts = ref["texts"];
    size_t n_diff = 0;
    std::string first_diff;
    auto compare = [&](size_t i, const char* what, const std::string& mine, const std::string& theirs) {
      if (mine == theirs) return;
      if (n_diff++ == 0)
        first_diff = std::string(what) + " of text " + std::to_string(i) + " " + texts[i].dump() + ": mole " + mine +
                     ", tokenizers " + theirs;
    };
    for (size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i].get<std::string>();
      compare(i, "pre-tokens", json(tok.pre_tokenize(text)).dump(), ref["pre_tokens"][i].dump());
      const Ids ids = tok.encode(text);
      compare(i, "ids", show(ids), ref["ids"][i].dump());
      const Ids with = tok.encode_with_post_processor(text);
      compare(i, "ids with the post-processor", show(with), ref["ids_with_special"][i].dump());
      const Ids theirs = ref["ids_with_special"][i].get<Ids>();
      compare(i, "decode", json(tok.decode(theirs, false)).dump(), ref["decode"][i].dump());
      compare(i, "decode skipping special tokens", json(tok.decode(theirs, true)).dump(),
              ref["decode_skip_special"][i].dump());
    }
    INFO("first difference: " << first_diff);
    CHECK(n_diff == 0);
    n_texts += texts.size();

    for (const json& p : ref["partial"]) {
      const Ids ids = p["ids"].get<Ids>();
      INFO("partial ids " << show(ids));
      CHECK(tok.decode(ids, false) == p["decode"].get<std::string>());
      CHECK(tok.decode(ids, true) == p["decode_skip_special"].get<std::string>());
    }
    const json& tokens = ref["id_to_token"];
    size_t n_token_diff = 0;
    for (size_t id = 0; id < tokens.size(); ++id) {
      const std::string token = tokens[id].get<std::string>();
      n_token_diff += tok.id_to_token(int64_t(id)) != token;
      // Not always `id`: added tokens are looked up by content, and a normalized one's token is its NFC form.
      n_token_diff += tok.token_to_id(token) != ref["token_to_id"][id].get<int64_t>();
    }
    CHECK(n_token_diff == 0);
    const std::vector<int64_t> special = ref["special_ids"].get<std::vector<int64_t>>();
    size_t n_special_diff = 0;
    for (int64_t id = 0; id < tok.vocab_size(); ++id)
      n_special_diff += tok.is_special(id) != (std::find(special.begin(), special.end(), id) != special.end());
    CHECK(n_special_diff == 0);
  }
  CHECK(n_texts > 2000);
  WARN("compared " << n_texts << " texts with the tokenizers library (pre-tokens, ids, ids with the post-processor, "
                       "decode)");
}
