// The field-list machinery (core/fields.h) on a small struct of its own: defaults kept for absent keys, every
// type read and written, enums by name, nested and inline structs, unknown keys refused with the nearest name.
#include <catch2/catch.hpp>

#include <optional>
#include <string>
#include <vector>

#include "core/fields.h"

using namespace mole;
using Catch::Contains;

namespace {

enum class Colour { kRed, kGreen };

struct Inner {
  double weight = 0.5;
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("weight", self.weight, "a number");
  }
  void validate(const FieldPath& at) const {
    if (weight < 0) at.fail("weight", "must be >= 0");
  }
};

struct Flat {
  bool on = false;
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("on", self.on, "listed inline in the outer object");
  }
};

// Scalars and lists, nested in Outer (two levels of dotted keys).
struct Values {
  int64_t count = 3;
  std::string name = "x";
  Colour colour = Colour::kRed;
  std::vector<int64_t> ids;
  std::vector<std::string> files;
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("count", self.count, "an integer");
    v("name", self.name, "a string");
    v("colour", self.colour, "an enum");
    v("ids", self.ids, "a list");
    v("files", self.files, "a list of strings");
  }
};

struct Outer {
  Values values;
  std::optional<Inner> maybe;
  Inner inner;
  Flat flat;
  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("values", self.values, "a nested struct of scalars and lists");
    v("maybe", self.maybe, "an optional struct");
    v("inner", self.inner, "a nested struct with a validate()");
    Flat::fields(self.flat, v);
  }
};

}  // namespace

namespace mole {
MOLE_ENUM_NAMES(Colour, "colour", {Colour::kRed, "red"}, {Colour::kGreen, "green"})
}  // namespace mole

TEST_CASE("field lists read, write and document a struct from one list", "[unit][fields]") {
  Outer defaults = read_fields<Outer>(json::object(), "f.json");
  CHECK(defaults.values.count == 3);
  CHECK(defaults.values.colour == Colour::kRed);
  CHECK_FALSE(defaults.maybe);

  json j = {{"values", {{"count", 7}, {"colour", "green"}, {"ids", {1, 2}}, {"files", "one.json"}}},
            {"maybe", {{"weight", 2.0}}},
            {"inner", {{"weight", 1.5}}},
            {"on", true}};
  Outer o = read_fields<Outer>(j, "f.json");
  CHECK(o.values.count == 7);
  CHECK(o.values.name == "x");
  CHECK(o.values.colour == Colour::kGreen);
  CHECK(o.values.ids == std::vector<int64_t>{1, 2});
  CHECK(o.values.files == std::vector<std::string>{"one.json"});  // a lone string is a list of one
  REQUIRE(o.maybe);
  CHECK(o.maybe->weight == 2.0);
  CHECK(o.inner.weight == 1.5);
  CHECK(o.flat.on);

  json written = write_fields(o);
  CHECK(written["values"]["colour"] == "green");
  CHECK(written["on"] == true);  // the inline struct's field sits in the outer object
  CHECK(written["inner"]["weight"] == 1.5);
  CHECK(write_fields(read_fields<Outer>(written, "again")) == written);

  auto docs = describe_fields<Outer>();
  std::vector<std::string> keys;
  for (const auto& d : docs) keys.push_back(d.key);
  CHECK(keys == std::vector<std::string>{"values", "values.count", "values.name", "values.colour", "values.ids",
                                         "values.files", "maybe", "maybe.weight", "inner", "inner.weight", "on"});
  CHECK(docs[3].type == "red, green");
  CHECK(docs[1].fallback == 3);
  CHECK_THAT(fields_help(docs), Contains("inner.weight") && Contains("a nested struct"));
}

TEST_CASE("field lists refuse unknown keys, wrong types and bad values, naming the dotted key", "[unit][fields]") {
  auto error = [](const json& j) {
    try {
      read_fields<Outer>(j, "f.json");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  CHECK(error({{"inner", {{"wieght", 1.0}}}}) ==
        "f.json: unknown key 'inner.wieght' (did you mean 'inner.weight'?)");
  CHECK_THAT(error({{"values", {{"cuont", 1}}}}), Contains("'values.cuont'") && Contains("'values.count'"));
  CHECK_THAT(error({{"values", {{"count", 1.5}}}}),
             Contains("f.json: values.count: expected an integer, got number 1.5"));
  CHECK_THAT(error({{"values", {{"count", "3"}}}}), Contains("values.count: expected an integer"));
  CHECK_THAT(error({{"values", {{"colour", "blue"}}}}),
             Contains("values.colour") && Contains("unknown colour 'blue' (red, green)"));
  CHECK_THAT(error({{"values", {{"ids", {1, "two"}}}}}), Contains("values.ids[1]: expected an integer"));
  CHECK_THAT(error({{"inner", 3}}), Contains("f.json: inner: expected an object"));
  CHECK_THAT(error({{"inner", {{"weight", -1.0}}}}), Contains("f.json: inner.weight: must be >= 0"));
  CHECK_THAT(error({{"maybe", {{"weight", -1.0}}}}), Contains("maybe.weight: must be >= 0"));
  CHECK_THROWS_WITH(read_fields<Outer>(json::array(), "f.json"), Contains("f.json: expected a JSON object"));
}

TEST_CASE("nearest_name suggests only close names", "[unit][fields]") {
  const std::vector<std::string> known = {"n_experts", "rank", "top_k", "switch_aux"};
  CHECK(nearest_name("n_expert", known) == "n_experts");
  CHECK(nearest_name("rnak", known) == "rank");
  CHECK(nearest_name("swich_aux", known) == "switch_aux");
  CHECK(nearest_name("learning_rate", known) == "");
}

TEST_CASE("a Hugging Face config's extra keys are ignored, its typed fields still checked", "[unit][fields]") {
  json j = {{"inner", {{"weight", 1.0}, {"initializer_range", 0.02}}}, {"transformers_version", "5.23.0"}};
  CHECK_THROWS_WITH(read_fields<Outer>(j, "config.json"), Contains("unknown key 'inner.initializer_range'"));
  Outer o = read_fields<Outer>(j, "config.json", UnknownKeys::kIgnore);
  CHECK(o.inner.weight == 1.0);
  j["inner"]["weight"] = "heavy";
  CHECK_THROWS_WITH(read_fields<Outer>(j, "config.json", UnknownKeys::kIgnore),
                    Contains("config.json: inner.weight: expected a number"));
}
