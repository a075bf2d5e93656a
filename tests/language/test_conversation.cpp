// Conversation templates against hand-written expectations: the expected ids are built from literal pieces of
// the prompt, each encoded by hand, and the expected labels written out; plus the property that the
// segment-by-segment ids equal encoding the whole prompt string, image expansion, truncation and the samples
// that must be reported instead of trained.
#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "core/json_config.h"
#include "language/conversation.h"
#include "language/tokenizer.h"
#include "tests/language/tiny_tokenizer.h"

using namespace mole;
using Catch::Matchers::Contains;
using Ids = std::vector<int64_t>;

namespace {

const std::string kVicunaSys =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";
const std::string kLlama2Sys =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language.";

// Expected ids and labels, appended piece by piece.
struct Expected {
  Ids ids, labels;
  void masked(const Ids& piece) {
    ids.insert(ids.end(), piece.begin(), piece.end());
    labels.insert(labels.end(), piece.size(), kIgnoreIndex);
  }
  void supervised(const Ids& piece) {
    ids.insert(ids.end(), piece.begin(), piece.end());
    labels.insert(labels.end(), piece.begin(), piece.end());
  }
};

Ids repeat(int64_t id, int64_t n) { return Ids(n, id); }

// encode(prompt) with each image id repeated n times: what the segment ids must equal.
Ids encode_expanded(const Tokenizer& tok, const std::string& prompt, int64_t n_image_tokens, bool add_bos = true) {
  Ids out;
  for (int64_t id : tok.encode(prompt, add_bos)) {
    if (id == tok.image_token_id()) out.insert(out.end(), n_image_tokens, id);
    else out.push_back(id);
  }
  return out;
}

void check_sample(const TokenizedSample& got, const Expected& want) {
  CHECK(got.problem == "");
  CHECK(got.input_ids == want.ids);
  CHECK(got.labels == want.labels);
  int64_t n = 0;
  for (int64_t label : want.labels) n += label != kIgnoreIndex;
  CHECK(got.n_supervised == n);
  CHECK(!got.truncated);
}

}  // namespace

TEST_CASE("template names, image tags and LLaVA's move of <image> to the front", "[unit][language][template]") {
  for (const char* name : {"vicuna_v1", "llava_llama_2", "plain", "mistral_instruct", "chatml", "llama3"})
    CHECK(template_name(parse_template(name)) == name);
  CHECK(parse_template("llava_v1") == Template::kVicunaV1);  // LLaVA's names for the same template
  CHECK(parse_template("v1") == Template::kVicunaV1);
  CHECK_THROWS_WITH(parse_template("chatml_direct"), Contains("'chatml_direct'") && Contains("vicuna_v1"));
  CHECK(template_system_prompt(Template::kVicunaV1) == kVicunaSys);
  CHECK(template_system_prompt(Template::kLlavaLlama2) == kLlama2Sys);

  CHECK(count_image_tags({{"human", "<image>\nWhat?"}, {"gpt", "A cat."}}) == 1);
  CHECK(count_image_tags({{"human", "<image><image> x"}, {"gpt", "<image>"}}) == 3);
  CHECK(count_image_tags({{"human", "What?"}, {"gpt", "image"}}) == 0);

  CHECK(move_image_to_front("<image>\nWhat is it?") == "<image>\nWhat is it?");
  CHECK(move_image_to_front("What is it?\n<image>") == "<image>\nWhat is it?");
  CHECK(move_image_to_front("  What <image> is it? ") == "<image>\nWhat  is it?");  // str.replace leaves both spaces
  CHECK(move_image_to_front("<image>") == "<image>");  // "<image>\n".strip()
  CHECK(move_image_to_front("no image here ") == "no image here ");
  // several tags in one turn stay where they are (interleaved images, LLaVA-OneVision)
  CHECK(move_image_to_front("Left <image> and right <image>?") == "Left <image> and right <image>?");
}

TEST_CASE("a system turn takes the template's system slot, and several images expand in order",
          "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t img = tok.image_token_id();
  const std::vector<Turn> turns = {{"system", "Answer briefly."}, {"human", "<image>\nWhat?"}, {"gpt", "A star."}};
  CHECK(prompt_text(turns, Template::kVicunaV1) == "Answer briefly. USER: <image>\nWhat? ASSISTANT: A star.</s>");
  CHECK(prompt_text(turns, Template::kLlavaLlama2) ==
        "[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\n<image>\nWhat? [/INST] A star. </s>");
  CHECK(prompt_text({{"system", ""}, {"human", "Q"}, {"gpt", "A"}}, Template::kLlavaLlama2) == "[INST] Q [/INST] A </s>");
  CHECK(prompt_text(turns, Template::kPlain) == "<image>A star.\n");
  CHECK(tokenize_conversation({{"human", "Q"}, {"system", "S"}, {"gpt", "A"}}, tok, Template::kVicunaV1, 4, 0).problem ==
        "a system turn after the first (turn 1)");

  // two images: two blocks of n_image_tokens, with the text between them kept
  const std::vector<Turn> two = {{"human", "<image> or <image>: which is red?"}, {"gpt", "The first."}};
  CHECK(prompt_text(two, Template::kVicunaV1) ==
        kVicunaSys + " USER: <image> or <image>: which is red? ASSISTANT: The first.</s>");
  const TokenizedSample s = tokenize_conversation(two, tok, Template::kVicunaV1, 3, 0);
  REQUIRE(s.problem.empty());
  std::vector<int64_t> runs;  // lengths of the runs of image ids
  for (size_t i = 0; i < s.input_ids.size(); ++i)
    if (s.input_ids[i] == img) {
      if (i == 0 || s.input_ids[i - 1] != img) runs.push_back(0);
      ++runs.back();
    }
  CHECK(runs == std::vector<int64_t>{3, 3});
  CHECK(prompt_text({{"human", "<image>\n<image>"}, {"gpt", "Two."}}, Template::kPlain) == "<image><image>Two.\n");
}

TEST_CASE("vicuna_v1: exact ids and labels", "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t bos = tok.bos_id(), eos = tok.eos_id(), img = tok.image_token_id();
  auto enc = [&](const std::string& s) { return tok.encode(s, false); };

  SECTION("one round with an image (moved to the front of the question)") {
    std::vector<Turn> turns = {{"human", "What colour is the star?\n<image>"}, {"gpt", "The star is green."}};
    CHECK(prompt_text(turns, Template::kVicunaV1) ==
          kVicunaSys + " USER: <image>\nWhat colour is the star? ASSISTANT: The star is green.</s>");
    Expected want;
    want.masked({bos});
    want.masked(enc(kVicunaSys + " USER: "));  // ends in a lone "▁" before the image
    want.masked(repeat(img, 5));
    want.masked(enc("\nWhat colour is the star? ASSISTANT:"));  // dummy prefix: "▁", "<0x0A>", ...
    want.supervised(enc("The star is green."));  // its dummy prefix is the space after "ASSISTANT:"
    want.supervised({eos});
    check_sample(tokenize_conversation(turns, tok, Template::kVicunaV1, 5, 0), want);
  }
  SECTION("two rounds, text only") {
    std::vector<Turn> turns = {{"human", "How many rings?"}, {"gpt", "There are 12 rings."},
                               {"human", "And cubes?"}, {"gpt", "3"}};
    CHECK(prompt_text(turns, Template::kVicunaV1) ==
          kVicunaSys + " USER: How many rings? ASSISTANT: There are 12 rings.</s>USER: And cubes? ASSISTANT: 3</s>");
    Expected want;
    want.masked({bos});
    want.masked(enc(kVicunaSys + " USER: How many rings? ASSISTANT:"));
    want.supervised(enc("There are 12 rings."));
    want.supervised({eos});
    want.masked(enc("USER: And cubes? ASSISTANT:"));  // "▁USER": a new piece after "</s>" (legacy)
    want.supervised(enc("3"));
    want.supervised({eos});
    check_sample(tokenize_conversation(turns, tok, Template::kVicunaV1, 576, 0), want);
  }
}

TEST_CASE("llava_llama_2: exact ids and labels", "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t bos = tok.bos_id(), eos = tok.eos_id(), img = tok.image_token_id();
  auto enc = [&](const std::string& s) { return tok.encode(s, false); };

  SECTION("two rounds with an image") {
    std::vector<Turn> turns = {{"human", "<image>\nWhat colour is the star?"}, {"gpt", "Green."},
                               {"human", "And the cube?"}, {"gpt", "Red, I think."}};
    CHECK(prompt_text(turns, Template::kLlavaLlama2) ==
          "[INST] <<SYS>>\n" + kLlama2Sys + "\n<</SYS>>\n\n<image>\nWhat colour is the star? [/INST] Green. </s>"
          "<s>[INST] And the cube? [/INST] Red, I think. </s>");
    Expected want;
    want.masked({bos});
    want.masked(enc("[INST] <<SYS>>\n" + kLlama2Sys + "\n<</SYS>>\n\n"));
    want.masked(repeat(img, 3));
    want.masked(enc("\nWhat colour is the star? [/INST]"));
    want.supervised(enc("Green. "));  // " Green. " : the answer and the space before "</s>"
    want.supervised({eos});
    want.masked({bos});  // "<s>" opens the next round, not supervised
    want.masked(enc("[INST] And the cube? [/INST]"));
    want.supervised(enc("Red, I think. "));
    want.supervised({eos});
    check_sample(tokenize_conversation(turns, tok, Template::kLlavaLlama2, 3, 0), want);
  }
  SECTION("one round, text only") {
    std::vector<Turn> turns = {{"human", "How many rings?"}, {"gpt", "12"}};
    Expected want;
    want.masked({bos});
    want.masked(enc("[INST] <<SYS>>\n" + kLlama2Sys + "\n<</SYS>>\n\nHow many rings? [/INST]"));
    want.supervised(enc("12 "));
    want.supervised({eos});
    check_sample(tokenize_conversation(turns, tok, Template::kLlavaLlama2, 3, 0), want);
  }
}

TEST_CASE("plain: <image> + caption + newline, only the caption supervised", "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t bos = tok.bos_id(), img = tok.image_token_id();
  auto enc = [&](const std::string& s) { return tok.encode(s, false); };

  SECTION("with an image: the human text is dropped") {
    std::vector<Turn> turns = {{"human", "Describe the picture briefly.\n<image>"}, {"gpt", "A red star."}};
    CHECK(prompt_text(turns, Template::kPlain) == "<image>A red star.\n");
    Expected want;
    want.masked({bos});
    want.masked(repeat(img, 4));
    want.supervised(enc("A red star.\n"));
    check_sample(tokenize_conversation(turns, tok, Template::kPlain, 4, 0), want);
  }
  SECTION("text only: the prompt is empty") {
    std::vector<Turn> turns = {{"human", "Describe it."}, {"gpt", "A red star."}};
    CHECK(prompt_text(turns, Template::kPlain) == "A red star.\n");
    Expected want;
    want.masked({bos});
    want.supervised(enc("A red star.\n"));
    check_sample(tokenize_conversation(turns, tok, Template::kPlain, 4, 0), want);
  }
  SECTION("more than one round is reported") {
    auto s = tokenize_conversation({{"human", "<image>"}, {"gpt", "a"}, {"human", "b"}, {"gpt", "c"}}, tok,
                                   Template::kPlain, 4, 0);
    CHECK(s.problem == "plain template takes one human and one gpt turn");
  }
}

TEST_CASE("segment ids equal encoding the whole prompt string", "[unit][language][template]") {
  // Awkward texts on purpose: spaces at the edges of answers, empty answers, newlines, digits, unicode,
  // and special-token text inside turns.
  const std::vector<std::vector<Turn>> conversations = {
      {{"human", "<image>\nWhat colour is the star?"}, {"gpt", "The star is green."}},
      {{"human", "What is it?\n<image>"}, {"gpt", "A cube."}, {"human", "Sure?"}, {"gpt", "Yes, 100%."},
       {"human", "Count."}, {"gpt", "1 2 3"}},
      {{"human", "How many rings?"}, {"gpt", " There are 12 rings. "}},
      {{"human", "Empty answer?  "}, {"gpt", ""}, {"human", "\n"}, {"gpt", "\nnew line first"}},
      {{"human", "café 東京 🙂"}, {"gpt", "naïve ✓"}},
      {{"human", "say </s> and <s>"}, {"gpt", "ok </s> done <pad>"}},
  };
  const Tokenizer& chat = test::tiny_chat_tokenizer();
  for (Template t : {Template::kVicunaV1, Template::kLlavaLlama2, Template::kPlain, Template::kMistralInstruct,
                     Template::kChatml, Template::kLlama3})
    for (const auto& turns : conversations) {
      if (t == Template::kPlain && turns.size() != 2) continue;
      std::string prompt = prompt_text(turns, t);
      INFO(template_name(t) << " prompt: [" << prompt << "]");
      for (int64_t n_image : {1, 7}) {
        auto sample = tokenize_conversation(turns, chat, t, n_image, 0);
        CHECK(sample.problem == "");
        CHECK(sample.input_ids == encode_expanded(chat, prompt, n_image, template_adds_bos(t)));
        CHECK(sample.labels.size() == sample.input_ids.size());
      }
    }
}

TEST_CASE("image expansion: n_image_tokens ids in one block, never supervised", "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t img = tok.image_token_id();
  std::vector<Turn> turns = {{"human", "<image>\nWhat is it?"}, {"gpt", "A star."}};
  for (Template t : {Template::kVicunaV1, Template::kLlavaLlama2, Template::kPlain}) {
    INFO(template_name(t));
    auto one = tokenize_conversation(turns, tok, t, 1, 0);
    auto many = tokenize_conversation(turns, tok, t, 576, 0);
    REQUIRE(many.problem == "");
    CHECK(many.input_ids.size() == one.input_ids.size() + 575);
    CHECK(many.n_supervised == one.n_supervised);
    auto first = std::find(many.input_ids.begin(), many.input_ids.end(), img) - many.input_ids.begin();
    CHECK(std::count(many.input_ids.begin(), many.input_ids.end(), img) == 576);
    for (int64_t k = 0; k < 576; ++k) {
      CHECK(many.input_ids[first + k] == img);
      CHECK(many.labels[first + k] == kIgnoreIndex);
    }
  }
  // No image tag: nothing to expand; a tokenizer without <image> is an error only when one is needed.
  Tokenizer bare = Tokenizer::load(test::tiny_tokenizer_dir() + "/tokenizer.model");
  CHECK(tokenize_conversation({{"human", "Hi"}, {"gpt", "Hello."}}, bare, Template::kVicunaV1, 576, 0).problem == "");
  CHECK_THROWS_WITH(tokenize_conversation(turns, bare, Template::kVicunaV1, 576, 0),
                    Contains("tokenizer.model") && Contains("no <image> token"));
}

TEST_CASE("truncation after expansion: kept, dropped for the image, reported when nothing is supervised",
          "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  const int64_t img = tok.image_token_id(), eos = tok.eos_id();
  std::vector<Turn> turns = {{"human", "<image>\nWhat colour is the star?"}, {"gpt", "The star is green."},
                             {"human", "And the cube?"}, {"gpt", "The cube is red."}};
  const int64_t n_image = 20;
  auto full = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, 0);
  REQUIRE(full.problem == "");
  const int64_t total = full.input_ids.size();
  const int64_t first_image = std::find(full.input_ids.begin(), full.input_ids.end(), img) - full.input_ids.begin();
  const int64_t first_label = std::find_if(full.labels.begin(), full.labels.end(),
                                           [](int64_t l) { return l != kIgnoreIndex; }) - full.labels.begin();
  const int64_t first_eos = std::find(full.input_ids.begin(), full.input_ids.end(), eos) - full.input_ids.begin();

  SECTION("max_len at or above the length: untouched") {
    auto same = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, total);
    CHECK(!same.truncated);
    CHECK(same.input_ids == full.input_ids);
  }
  SECTION("cut inside the second answer: kept, a prefix of the full sample") {
    int64_t max_len = total - 3;
    auto cut = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, max_len);
    CHECK(cut.problem == "");
    CHECK(cut.truncated);
    CHECK(cut.input_ids == Ids(full.input_ids.begin(), full.input_ids.begin() + max_len));
    CHECK(cut.labels == Ids(full.labels.begin(), full.labels.begin() + max_len));
    CHECK(cut.n_supervised == full.n_supervised - 3);
  }
  SECTION("cut right after the first answer's </s>: kept") {
    auto cut = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, first_eos + 1);
    CHECK(cut.problem == "");
    CHECK(cut.labels.back() == eos);
  }
  SECTION("cut inside the image block: dropped") {
    auto cut = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, first_image + n_image - 1);
    CHECK(cut.problem == "image does not fit in max_len");
    CHECK(cut.truncated);
  }
  SECTION("cut before the image: dropped too (the image would be lost)") {
    auto cut = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, first_image);
    CHECK(cut.problem == "image does not fit in max_len");
  }
  SECTION("cut after the image but before any answer: reported, not trained with zero loss") {
    auto cut = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, first_label);
    CHECK(cut.problem == "no supervised tokens after truncation");
    CHECK(cut.n_supervised == 0);
    CHECK(cut.truncated);
  }
  SECTION("one supervised token is enough") {
    auto cut = tokenize_conversation(turns, tok, Template::kVicunaV1, n_image, first_label + 1);
    CHECK(cut.problem == "");
    CHECK(cut.n_supervised == 1);
  }
}

TEST_CASE("roles: alternate human/gpt from human, other conversations are reported", "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_tokenizer();
  auto problem = [&](const std::vector<Turn>& turns) {
    return tokenize_conversation(turns, tok, Template::kVicunaV1, 4, 0).problem;
  };
  CHECK(problem({{"human", "a"}, {"bot", "b"}}) == "unknown role 'bot'");
  CHECK(problem({{"gpt", "a"}, {"human", "b"}}) == "roles do not alternate human/gpt (turn 0 is 'gpt')");
  CHECK(problem({{"human", "a"}, {"human", "b"}}) == "roles do not alternate human/gpt (turn 1 is 'human')");
  CHECK(problem({}) == "no assistant turn");
  CHECK(problem({{"human", "a"}}) == "no assistant turn");
  CHECK_THROWS_WITH(prompt_text({{"human", "a"}}, Template::kVicunaV1), Contains("no assistant turn"));
  // A trailing question without an answer is dropped: it could carry no supervised token.
  std::vector<Turn> turns = {{"human", "a"}, {"gpt", "b"}};
  auto with_tail = turns;
  with_tail.push_back({"human", "c?"});
  CHECK(tokenize_conversation(with_tail, tok, Template::kVicunaV1, 4, 0).input_ids ==
        tokenize_conversation(turns, tok, Template::kVicunaV1, 4, 0).input_ids);
}

TEST_CASE("mistral_instruct, chatml and llama3: exact ids and labels", "[unit][language][template]") {
  const Tokenizer& tok = test::tiny_chat_tokenizer();
  const int64_t bos = tok.bos_id(), eos = tok.eos_id(), img = tok.image_token_id();
  auto enc = [&](const std::string& s) { return tok.encode(s, false); };
  auto id = [&](const std::string& token) { return Ids{tok.token_to_id(token)}; };
  const std::vector<Turn> turns = {{"human", "What colour is the star?\n<image>"}, {"gpt", "Green."},
                                   {"human", "And the cube?"}, {"gpt", "Red."}};

  SECTION("mistral_instruct") {
    CHECK(prompt_text(turns, Template::kMistralInstruct) ==
          "[INST] <image>\nWhat colour is the star? [/INST]Green.</s>[INST] And the cube? [/INST]Red.</s>");
    Expected want;
    want.masked({bos});
    want.masked(enc("[INST] "));
    want.masked(repeat(img, 2));
    want.masked(enc("\nWhat colour is the star? [/INST]"));
    want.supervised(tok.encode_no_prefix("Green."));
    want.supervised({eos});
    want.masked(enc("[INST] And the cube? [/INST]"));
    want.supervised(tok.encode_no_prefix("Red."));
    want.supervised({eos});
    check_sample(tokenize_conversation(turns, tok, Template::kMistralInstruct, 2, 0), want);
  }
  SECTION("chatml: no BOS, Qwen2's default system turn, <|im_end|> supervised and the newline after it not") {
    CHECK(prompt_text(turns, Template::kChatml) ==
          "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat colour is the "
          "star?<|im_end|>\n<|im_start|>assistant\nGreen.<|im_end|>\n<|im_start|>user\nAnd the cube?<|im_end|>\n"
          "<|im_start|>assistant\nRed.<|im_end|>\n");
    Expected want;
    want.masked(id("<|im_start|>"));
    want.masked(enc("system\nYou are a helpful assistant."));
    want.masked(id("<|im_end|>"));
    want.masked(enc("\n"));
    want.masked(id("<|im_start|>"));
    want.masked(enc("user\n"));
    want.masked(repeat(img, 2));
    want.masked(enc("\nWhat colour is the star?"));
    want.masked(id("<|im_end|>"));
    want.masked(enc("\n"));
    want.masked(id("<|im_start|>"));
    want.masked(enc("assistant\n"));
    want.supervised(tok.encode_no_prefix("Green."));
    want.supervised(id("<|im_end|>"));
    want.masked(enc("\n"));
    want.masked(id("<|im_start|>"));
    want.masked(enc("user\nAnd the cube?"));
    want.masked(id("<|im_end|>"));
    want.masked(enc("\n"));
    want.masked(id("<|im_start|>"));
    want.masked(enc("assistant\n"));
    want.supervised(tok.encode_no_prefix("Red."));
    want.supervised(id("<|im_end|>"));
    want.masked(enc("\n"));
    check_sample(tokenize_conversation(turns, tok, Template::kChatml, 2, 0), want);
  }
  SECTION("llama3: <|begin_of_text|> instead of the tokenizer's BOS, a system turn, contents stripped") {
    const std::vector<Turn> sys = {{"system", " Be brief. "}, {"human", "<image>\nShape?"}, {"gpt", " A star. "}};
    CHECK(prompt_text(sys, Template::kLlama3) ==
          "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
          "<|end_header_id|>\n\n<image>\nShape?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA star.<|eot_id|>");
    Expected want;
    want.masked(id("<|begin_of_text|>"));
    want.masked(id("<|start_header_id|>"));
    want.masked(enc("system"));
    want.masked(id("<|end_header_id|>"));
    want.masked(enc("\n\nBe brief."));
    want.masked(id("<|eot_id|>"));
    want.masked(id("<|start_header_id|>"));
    want.masked(enc("user"));
    want.masked(id("<|end_header_id|>"));
    want.masked(enc("\n\n"));
    want.masked(repeat(img, 3));
    want.masked(enc("\nShape?"));
    want.masked(id("<|eot_id|>"));
    want.masked(id("<|start_header_id|>"));
    want.masked(enc("assistant"));
    want.masked(id("<|end_header_id|>"));
    want.masked(enc("\n\n"));
    want.supervised(tok.encode_no_prefix("A star."));
    want.supervised(id("<|eot_id|>"));
    check_sample(tokenize_conversation(sys, tok, Template::kLlama3, 3, 0), want);
  }
  SECTION("a tokenizer without the template's special tokens is refused, naming them") {
    CHECK_THROWS_WITH(tokenize_conversation(turns, test::tiny_tokenizer(), Template::kChatml, 2, 0),
                      Contains("template chatml needs the special token <|im_start|>"));
    CHECK_THROWS_WITH(tokenize_conversation(turns, test::tiny_tokenizer(), Template::kLlama3, 2, 0),
                      Contains("<|begin_of_text|>"));
  }
  SECTION("generation stops at eos and at the template's end of turn") {
    CHECK(template_stop_ids(Template::kChatml, tok) == Ids{eos, tok.token_to_id("<|im_end|>")});
    CHECK(template_stop_ids(Template::kLlama3, tok) == Ids{eos, tok.token_to_id("<|eot_id|>")});
    CHECK(template_stop_ids(Template::kVicunaV1, tok) == Ids{eos});
  }
}

TEST_CASE("mistral_instruct, chatml and llama3 equal the models' own chat templates rendered by transformers",
          "[reference][language][template]") {
  const Tokenizer& tok = test::tiny_chat_tokenizer();
  const std::vector<std::vector<Turn>> conversations = {
      {{"human", "What colour is the star?"}, {"gpt", "The star is green."}, {"human", "And the cube?"}, {"gpt", "Red."}},
      {{"human", "How many rings?"}, {"gpt", "There are 12 rings."}},
      {{"system", "Answer in one word."}, {"human", "Colour of grass?"}, {"gpt", "Green."}},
      {{"human", "café 東京, 100%?"}, {"gpt", "Yes: 1 2 3."}},
  };
  struct Case {
    Template t;
    std::vector<Turn> turns;
  };
  std::vector<Case> cases;
  json in = json::array();
  for (Template t : {Template::kMistralInstruct, Template::kChatml, Template::kLlama3})
    for (const auto& turns : conversations) {
      if (t == Template::kMistralInstruct && turns[0].role == "system") continue;  // its template has no system role
      json messages = json::array();
      for (const Turn& turn : turns)
        messages.push_back({{"role", turn.role == "human" ? "user" : turn.role == "gpt" ? "assistant" : "system"},
                            {"content", turn.text}});
      in.push_back({{"template", template_name(t)}, {"messages", messages}});
      cases.push_back({t, turns});
    }
  const std::string dir = test::scratch_dir("chat_template_reference");
  write_json_file(dir + "/conversations.json", in);
  std::string out;
  const int rc = test::run_command(std::string(MOLE_PYTHON) + " " + test::source_dir() +
                                       "/tests/reference/check_chat_templates.py --tokenizer " +
                                       test::tiny_chat_tokenizer_dir() + " --conversations " + dir +
                                       "/conversations.json --out " + dir + "/out.json",
                                   &out);
  INFO(out);
  REQUIRE(rc == 0);
  const json ref = read_json_file(dir + "/out.json");
  INFO("transformers " << ref["transformers"].get<std::string>());
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string prompt = prompt_text(cases[i].turns, cases[i].t);
    INFO(template_name(cases[i].t) << " conversation " << i << ": [" << prompt << "]");
    CHECK(ref["text"][i].get<std::string>() == (template_adds_bos(cases[i].t) ? "<s>" : "") + prompt);
    CHECK(ref["ids"][i].get<Ids>() == tokenize_conversation(cases[i].turns, tok, cases[i].t, 1, 0).input_ids);
  }
}

TEST_CASE("templates on tokenizer.json (byte-level BPE) tokenizers: segment ids equal encoding the whole prompt",
          "[reference][language][template][tokenizer]") {
  // The reference tokenizer.json files (tests/reference/make_bpe_reference.py) in folders with the
  // tokenizer_config.json such models ship: bos and eos named there.
  auto folder = [](const std::string& name, const json& config) {
    const std::string dir = test::scratch_dir("bpe_template_" + name);
    std::filesystem::copy_file(test::ref_dir() + "/bpe/" + name + "/tokenizer.json", dir + "/tokenizer.json");
    write_json_file(dir + "/tokenizer_config.json", config);
    return dir;
  };
  const Tokenizer llama3 = Tokenizer::load(folder("llama3", {{"bos_token", "<|begin_of_text|>"}, {"eos_token", "<|eot_id|>"}}));
  const Tokenizer qwen2 = Tokenizer::load(folder("qwen2", {{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}}));
  CHECK(llama3.bos_id() == llama3.token_to_id("<|begin_of_text|>"));
  CHECK(llama3.image_token_id() == llama3.token_to_id("<image>"));
  CHECK(qwen2.bos_id() == -1);  // Qwen2 has none: its post-processor adds nothing
  CHECK(qwen2.pad_id() == qwen2.token_to_id("<|endoftext|>"));
  CHECK(llama3.decode(llama3.encode("Hello world, 42!", false), true) == "Hello world, 42!");

  const std::vector<std::vector<Turn>> with_images = {
      {{"human", "<image>\nWhat colour is the star?"}, {"gpt", "The star is green."}, {"human", "And 2+2?"},
       {"gpt", " 4, I think. "}},
      {{"system", "Answer briefly."}, {"human", "café 東京 🙂?"}, {"gpt", "naïve ✓\n\nnew lines"}},
  };
  const std::vector<std::vector<Turn>> text_only = {with_images[1], {{"human", "How many rings?"}, {"gpt", "There are 12."}}};
  struct Case {
    const Tokenizer* tok;
    Template t;
    const std::vector<std::vector<Turn>>* conversations;
  };
  for (const Case& c : {Case{&llama3, Template::kLlama3, &with_images}, Case{&llama3, Template::kVicunaV1, &with_images},
                        Case{&llama3, Template::kMistralInstruct, &with_images}, Case{&qwen2, Template::kChatml, &text_only}})
    for (const auto& turns : *c.conversations) {
      std::string prompt = prompt_text(turns, c.t);
      // vicuna_v1 and mistral_instruct end a turn with the tokenizer's eos, which prompt_text spells "</s>"
      for (size_t at = prompt.find("</s>"); at != std::string::npos; at = prompt.find("</s>", at))
        prompt.replace(at, 4, c.tok->id_to_piece(c.tok->eos_id()));
      INFO(template_name(c.t) << " prompt: [" << prompt << "]");
      const TokenizedSample sample = tokenize_conversation(turns, *c.tok, c.t, 3, 0);
      REQUIRE(sample.problem == "");
      CHECK(sample.input_ids == encode_expanded(*c.tok, prompt, 3, template_adds_bos(c.t)));
      CHECK(sample.n_supervised > 0);
    }
}
