// LLaVA JSON / JSON Lines reading: good records kept in order, bad records skipped and counted by reason
// (never the end of the run), strict mode, and whole files that are not LLaVA-shaped refused at once.
#include <catch2/catch.hpp>

#include <fstream>
#include <string>

#include "data/llava_data.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;

namespace {

std::string write(const std::string& dir, const std::string& name, const std::string& text) {
  std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

const char* kGood1 = R"({"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "What?\n<image>"}, {"from": "gpt", "value": "A cat."}]})";
const char* kGood2 = R"({"id": "b", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Hello!"}]})";

}  // namespace

TEST_CASE("LLaVA JSON list and JSON Lines read the same records", "[unit][data][llava]") {
  std::string dir = mole::test::scratch_dir("llava_data_formats");
  auto list = read_llava_dataset(write(dir, "d.json", std::string("[") + kGood1 + ",\n" + kGood2 + "]"));
  auto lines = read_llava_dataset(write(dir, "d.jsonl", std::string(kGood1) + "\n\n" + kGood2 + "\n"));
  for (const auto* d : {&list, &lines}) {
    REQUIRE(d->records.size() == 2);
    CHECK(d->skipped.total() == 0);
    CHECK(d->records[0].id == "a");
    CHECK(d->records[0].images == std::vector<std::string>{"x.jpg"});
    CHECK(d->records[0].turns[0].text == "What?\n<image>");
    CHECK(d->records[1].images.empty());  // text-only
    CHECK(d->records[1].turns.size() == 4);
    CHECK(d->records[1].turns[3].role == "gpt");
  }
}

TEST_CASE("bad LLaVA records are skipped and counted by reason", "[unit][data][llava]") {
  std::string dir = mole::test::scratch_dir("llava_data_bad");
  std::string bad_utf8 = std::string(R"({"id": "u", "conversations": [{"from": "human", "value": "caf)") + "\xC3\x28" +
                         R"("}, {"from": "gpt", "value": "x"}]})";
  std::string text = std::string("[") + kGood1 + ",\n" +
                     R"({"id": "m", "conversations": [{"from": "human" "value": "oops"}]})" + ",\n" +  // malformed
                     R"({"id": "n"})" + ",\n" +                                                        // no conversations
                     R"({"id": "e", "conversations": []})" + ",\n" +                                   // empty
                     R"({"id": "r", "conversations": [{"from": "robot", "value": "x"}]})" + ",\n" +    // unknown role
                     R"({"id": "t", "image": "y.jpg", "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "z"}]})" +
                     ",\n" + bad_utf8 + ",\n" + kGood2 + "]";
  auto d = read_llava_dataset(write(dir, "d.json", text));
  CHECK(d.n_read == 8);
  REQUIRE(d.records.size() == 2);
  CHECK(d.records[1].id == "b");
  auto counts = d.skipped.counts();
  CHECK(counts["malformed JSON record"] == 1);
  CHECK(counts["no conversations"] == 1);
  CHECK(counts["empty conversation"] == 1);
  CHECK(counts["unknown role 'robot'"] == 1);
  CHECK(counts["<image> tags (2) do not match images (1)"] == 1);
  CHECK(counts["invalid UTF-8"] == 1);
  CHECK(d.skipped.total() == 6);
  auto j = d.skipped.to_json();
  CHECK(j["reasons"]["no conversations"]["first_ids"][0] == "n");
  CHECK_THAT(d.skipped.to_text(), Contains("1 x empty conversation (e.g. e in " + dir + "/d.json)"));
  CHECK(j["reasons"]["no conversations"]["first_files"][0] == dir + "/d.json");

  CHECK_THROWS_WITH(read_llava_dataset(dir + "/d.json", /*strict=*/true),
                    Contains("d.json: record #1 (index 1): malformed JSON record"));

  // JSON Lines: even a line cut in half costs only that line.
  auto lines = read_llava_dataset(write(dir, "d.jsonl", std::string(kGood1) + "\n" +
                                                           R"({"id": "cut", "conversations": [{"from": )" + "\n" +
                                                           kGood2 + "\n"));
  CHECK(lines.records.size() == 2);
  CHECK(lines.skipped.counts().at("malformed JSON record") == 1);
}

TEST_CASE("files that are not LLaVA datasets are refused at start-up", "[unit][data][llava]") {
  std::string dir = mole::test::scratch_dir("llava_data_wrongfile");
  CHECK_THROWS_WITH(read_llava_dataset(dir + "/missing.json"), Contains("missing.json: cannot open"));
  CHECK_THROWS_WITH(read_llava_dataset(write(dir, "empty.json", "  \n")), Contains("empty file"));
  CHECK_THROWS_WITH(read_llava_dataset(write(dir, "other.json", R"([{"question_id": 1, "answer": "x"}])")),
                    Contains("not a LLaVA conversation file"));
  CHECK_THROWS_WITH(read_llava_dataset(write(dir, "cut.json", std::string("[") + kGood1 + ", {\"id\": ")),
                    Contains("not closed"));
}

TEST_CASE("split_json_array respects strings and nesting", "[unit][data][llava]") {
  auto parts = split_json_array(R"([ {"a": "x,]}"}, [1, [2, 3]], "s\"q,", 4 ])", "t");
  REQUIRE(parts.size() == 4);
  CHECK(parts[0] == R"( {"a": "x,]}"})");
  CHECK(parts[2] == R"( "s\"q,")");
  CHECK(split_json_array("[]", "t").empty());
}

TEST_CASE("record forms users bring: messages, role/content, parts, system, gpt first, images without tags",
          "[unit][data][llava]") {
  auto parse = [](const std::string& text, LlavaRecord* r) { return parse_llava_record(nlohmann::json::parse(text), 0, r); };
  using Turns = std::vector<std::pair<std::string, std::string>>;
  auto turns_of = [](const LlavaRecord& r) {
    Turns t;
    for (const Turn& turn : r.turns) t.emplace_back(turn.role, turn.text);
    return t;
  };
  LlavaRecord r;
  SECTION("OpenAI / LLaMA-Factory messages with role and content, a system turn first") {
    REQUIRE(parse(R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Hi"},
                                   {"role": "assistant", "content": "Hello."}], "images": ["a.png"]})", &r) == "");
    CHECK(turns_of(r) == Turns{{"system", "Be brief."}, {"human", "<image>Hi"}, {"gpt", "Hello."}});
    CHECK(r.images == std::vector<std::string>{"a.png"});
  }
  SECTION("user/assistant under from/value, content as a list of parts") {
    REQUIRE(parse(R"({"image": "a.png", "conversations": [{"from": "user", "value": [{"type": "image"},
                     {"type": "text", "text": "What?"}]}, {"from": "assistant", "value": "A cat."}]})", &r) == "");
    CHECK(turns_of(r) == Turns{{"human", "<image>What?"}, {"gpt", "A cat."}});
  }
  SECTION("a first turn from gpt is dropped, as LLaVA's preprocess does") {
    REQUIRE(parse(R"({"conversations": [{"from": "gpt", "value": "Ask me."}, {"from": "human", "value": "Q"},
                     {"from": "gpt", "value": "A"}]})", &r) == "");
    CHECK(turns_of(r) == Turns{{"human", "Q"}, {"gpt", "A"}});
    REQUIRE(parse(R"({"conversations": [{"from": "system", "value": "S"}, {"from": "gpt", "value": "x"},
                     {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]})", &r) == "");
    CHECK(turns_of(r) == Turns{{"system", "S"}, {"human", "Q"}, {"gpt", "A"}});
  }
  SECTION("images without a tag: one <image> per image at the start of the first human turn") {
    REQUIRE(parse(R"({"image": "a.png", "conversations": [{"from": "human", "value": "What?"},
                     {"from": "gpt", "value": "A cat."}]})", &r) == "");
    CHECK(r.turns[0].text == "<image>\nWhat?");
    REQUIRE(parse(R"({"image": ["a.png", "b.png"], "conversations": [{"from": "system", "value": "S"},
                     {"from": "human", "value": "Same?"}, {"from": "gpt", "value": "No."}]})", &r) == "");
    CHECK(r.turns[1].text == "<image>\n<image>\nSame?");
  }
  SECTION("several images with as many tags, anywhere, in order") {
    REQUIRE(parse(R"({"image": ["a.png", "b.png", "c.png"], "conversations": [{"from": "human", "value": "<image> vs <image>?"},
                     {"from": "gpt", "value": "Left."}, {"from": "human", "value": "And <image>?"}, {"from": "gpt", "value": "Right."}]})",
                  &r) == "");
    CHECK(r.images.size() == 3);
  }
  SECTION("what stays a problem") {
    CHECK(parse(R"({"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image> x"},
                   {"from": "gpt", "value": "y"}]})", &r) == "<image> tags (1) do not match images (2)");
    CHECK(parse(R"({"conversations": [{"from": "human", "value": "x"}, {"from": "system", "value": "y"}]})", &r) ==
          "a system turn after the first (turn 1)");
    CHECK(parse(R"({"image": "a.png", "images": ["b.png"], "conversations": []})", &r) == "both \"image\" and \"images\"");
    CHECK(parse(R"({"image": "a.png", "conversations": [{"from": "gpt", "value": "y"}]})", &r) == "no human turn");
    CHECK(parse(R"({"messages": [{"role": "user", "content": [{"type": "audio"}]}]})", &r) ==
          "conversation turn 0 has no string value");
  }
}
