// One field list per config struct (gemma.cpp's VisitFields idea): a struct names each field once, with its
// JSON key and a line of documentation, and reading, writing and documenting all come from that one list.
//
//   struct LoraThing {
//     int64_t rank = 16;
//     Gating gating = Gating::kTopkSoftmax;
//     BalanceLossOptions losses;                      // a struct with its own list: a nested object
//     template <class Self, class V> static void fields(Self& self, V& v) {
//       v("rank", self.rank, "LoRA rank", between(1, 4096));  // a range: checked on read, shown in --help
//       v("gating", self.gating, "how router logits become gate weights");
//       v("losses", self.losses, "balance losses");
//     }
//     void validate(const FieldPath& at) const;         // optional: rules across fields
//   };
//
//   read_fields<LoraThing>(json, "run.json")  -> a struct; every key optional (the default stays), a key the list
//                                                does not know is an error at any depth, naming the dotted key and
//                                                the nearest known name: "run.json: unknown key 'model.adapter.rnak'
//                                                (did you mean 'model.adapter.rank'?)"
//   write_fields(value)                       -> the JSON object of every field, defaults included
//   describe_fields<LoraThing>()              -> (dotted key, type, default, doc) rows for --help and docs
//
// A struct may list the fields of a member struct inline (`Inner::fields(self.inner, v)`): they then share the
// outer JSON object (how AdapterConfig embeds MoleOptions without re-listing it).
// Enumerations are read and written by name through their one name table (EnumTable below).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/json_config.h"

namespace mole {

// ---- enumerations: one name table each ----------------------------------------------------------------------

template <class E>
struct EnumTable {
  const char* what;                                // "gating": used in error messages
  std::vector<std::pair<E, std::string>> entries;  // value -> name, in the order shown to users
};

// Specialised next to each enum: declared in its header (template <> const EnumTable<Gating>&
// enum_table<Gating>();) and defined in its .cpp with MOLE_ENUM_NAMES below.
template <class E>
const EnumTable<E>& enum_table();

// Defines enum_table<Enum>() inside namespace mole:
//   MOLE_ENUM_NAMES(Gating, "gating", {Gating::kTopkSoftmax, "topk_softmax"}, {Gating::kSoftmaxTopk, "softmax_topk"})
#define MOLE_ENUM_NAMES(Enum, what, ...)                               \
  template <>                                                          \
  const ::mole::EnumTable<Enum>& enum_table<Enum>() {                  \
    static const ::mole::EnumTable<Enum> table{what, {__VA_ARGS__}};   \
    return table;                                                      \
  }

template <class E>
std::string enum_choices() {
  std::string list;
  for (const auto& [value, name] : enum_table<E>().entries) list += (list.empty() ? "" : ", ") + name;
  return list;
}

template <class E>
std::string enum_name(E value) {
  for (const auto& [v, name] : enum_table<E>().entries)
    if (v == value) return name;
  return "?";
}

// The value named `name`; anything else is a ConfigError "unknown gating 'x' (topk_softmax, ...)".
template <class E>
E parse_enum(const std::string& name) {
  for (const auto& [value, n] : enum_table<E>().entries)
    if (n == name) return value;
  throw ConfigError(std::string("unknown ") + enum_table<E>().what + " '" + name + "' (" + enum_choices<E>() + ")");
}

// ---- where a field is: the file and the dotted key -----------------------------------------------------------

struct FieldPath {
  std::string file;    // the file (or command-line source) the JSON came from
  std::string prefix;  // dotted key of the object being read, "" at the top

  std::string key(const std::string& name) const { return prefix.empty() ? name : prefix + "." + name; }
  FieldPath child(const std::string& name) const { return {file, key(name)}; }
  // Throws ConfigError "<file>: <dotted key>: <message>".
  [[noreturn]] void fail(const std::string& name, const std::string& message) const;
};

// The known name closest to `name` by edit distance (for "did you mean"); "" when none is close.
std::string nearest_name(const std::string& name, const std::vector<std::string>& known);

// ---- bounds: the range a numeric field accepts -----------------------------------------------------------------

// A numeric field's range, declared in its field list (v(key, value, doc, Bounds{...})): read_field refuses what is
// outside it, naming the dotted key, and the documentation shows it. Open ends exclude the limit (lr > 0).
// Applies to integers, numbers and lists of them (each item).
struct Bounds {
  double min = -HUGE_VAL, max = HUGE_VAL;
  bool min_open = false, max_open = false;
  bool contains(double v) const {
    return (min_open ? v > min : v >= min) && (max_open ? v < max : v <= max);
  }
  std::string text(bool integer) const;         // "1..4096", "[0, 1)", "(0, 10]", ">= 0"
  std::string requirement(bool integer) const;  // "in 1..4096", "in [0, 1)", ">= 0": what an error says
};
inline Bounds at_least(double min) { return {min, HUGE_VAL}; }
inline Bounds above(double min) { return {min, HUGE_VAL, true}; }
inline Bounds between(double min, double max) { return {min, max}; }
inline Bounds unit_open_above() { return {0.0, 1.0, false, true}; }  // [0, 1): a probability that is not 1

// ---- type traits the visitors dispatch on --------------------------------------------------------------------

template <class T, class = void>
struct has_fields : std::false_type {};
template <class T>
struct has_fields<T, std::void_t<decltype(T::fields(std::declval<T&>(), std::declval<int&>()))>> : std::true_type {};

template <class T, class = void>
struct has_validate : std::false_type {};
template <class T>
struct has_validate<T, std::void_t<decltype(std::declval<const T&>().validate(std::declval<const FieldPath&>()))>>
    : std::true_type {};

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

// The element type under optional<> and vector<> (int64_t for std::vector<int64_t>).
template <class T>
struct scalar_of {
  using type = T;
};
template <class T>
struct scalar_of<std::optional<T>> : scalar_of<T> {};
template <class T>
struct scalar_of<std::vector<T>> : scalar_of<T> {};
template <class T>
using scalar_of_t = typename scalar_of<T>::type;

// Type names shown in documentation.
template <class T>
std::string field_type_name() {
  if constexpr (std::is_same_v<T, bool>) return "bool";
  else if constexpr (std::is_integral_v<T>) return "integer";
  else if constexpr (std::is_floating_point_v<T>) return "number";
  else if constexpr (std::is_same_v<T, std::string>) return "string";
  else if constexpr (std::is_enum_v<T>) return enum_choices<T>();
  else if constexpr (std::is_same_v<T, json>) return "object";
  else if constexpr (is_vector<T>::value) return "list of " + field_type_name<typename T::value_type>();
  else if constexpr (is_optional<T>::value) return field_type_name<typename T::value_type>();
  else return "object";
}

// ---- writing -------------------------------------------------------------------------------------------------

template <class T>
json field_to_json(const T& value);

class FieldWriter {
 public:
  template <class T>
  void operator()(const char* key, const T& value, const char* /*doc*/, const Bounds& = {}) {
    out[key] = field_to_json(value);
  }
  json out = json::object();
};

template <class T>
json write_fields(const T& value) {
  FieldWriter writer;
  T::fields(value, writer);
  return writer.out;
}

template <class T>
json field_to_json(const T& value) {
  if constexpr (std::is_enum_v<T>) return enum_name(value);
  else if constexpr (has_fields<T>::value) return write_fields(value);
  else if constexpr (is_optional<T>::value) return value ? field_to_json(*value) : json();
  else if constexpr (is_vector<T>::value) {
    json list = json::array();
    for (const auto& item : value) list.push_back(field_to_json(item));
    return list;
  } else return json(value);
}

// ---- reading -------------------------------------------------------------------------------------------------

// What a reader does with a key no field claims: mole's own files refuse it (a typo must not pass); a Hugging
// Face config.json carries many keys mole has no use for, so its readers ignore them.
enum class UnknownKeys { kRefuse, kIgnore };

template <class T>
void read_field(const json& value, T& out, const FieldPath& at, const std::string& name,
                UnknownKeys unknown = UnknownKeys::kRefuse);

// Reads the fields of one JSON object; finish() refuses the keys no field claimed (with UnknownKeys::kRefuse).
class FieldReader {
 public:
  FieldReader(const json& object, FieldPath at, UnknownKeys unknown = UnknownKeys::kRefuse);
  template <class T>
  void operator()(const char* key, T& value, const char* /*doc*/) {
    known_.emplace_back(key);
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return;  // absent: the default stays
    read_field(*it, value, at_, key, unknown_);
  }
  template <class T>
  void operator()(const char* key, T& value, const char* doc, const Bounds& bounds) {
    (*this)(key, value, doc);
    check_bounds(value, bounds, key);
  }
  void finish() const;

 private:
  template <class T>
  void check_bounds(const T& value, const Bounds& bounds, const std::string& key) const {
    if constexpr (is_optional<T>::value) {
      if (value) check_bounds(*value, bounds, key);
    } else if constexpr (is_vector<T>::value) {
      for (size_t i = 0; i < value.size(); ++i) check_bounds(value[i], bounds, key + "[" + std::to_string(i) + "]");
    } else if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      if (!bounds.contains(double(value)))
        at_.fail(key, "must be " + bounds.requirement(std::is_integral_v<T>) + ", got " + json(value).dump());
    } else {
      static_assert(std::is_arithmetic_v<T>, "Bounds are for numeric fields");
    }
  }
  const json& object_;
  FieldPath at_;
  UnknownKeys unknown_;
  std::vector<std::string> known_;
};

// The struct T read from a JSON object at `at` (its defaults where keys are absent), then T::validate(at).
template <class T>
T read_struct(const json& object, const FieldPath& at, UnknownKeys unknown = UnknownKeys::kRefuse) {
  if (!object.is_object()) {
    if (at.prefix.empty()) throw ConfigError(at.file + ": expected a JSON object, got " + object.type_name());
    throw ConfigError(at.file + ": " + at.prefix + ": expected an object, got " + object.type_name());
  }
  T value;
  FieldReader reader(object, at, unknown);
  T::fields(value, reader);
  reader.finish();
  if constexpr (has_validate<T>::value) value.validate(at);
  return value;
}

template <class T>
T read_fields(const json& object, const std::string& file, UnknownKeys unknown = UnknownKeys::kRefuse) {
  return read_struct<T>(object, FieldPath{file, ""}, unknown);
}

template <class T>
void read_field(const json& value, T& out, const FieldPath& at, const std::string& name, UnknownKeys unknown) {
  auto wrong = [&](const std::string& expected) {
    at.fail(name, "expected " + expected + ", got " + std::string(value.type_name()) +
                      (value.is_primitive() ? " " + json_excerpt(value) : ""));
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!value.is_boolean()) wrong("true or false");
    out = value.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!value.is_number_integer()) wrong("an integer");
    if (std::is_unsigned_v<T> && value.is_number_integer() && !value.is_number_unsigned() && value.get<int64_t>() < 0)
      at.fail(name, "must not be negative, got " + value.dump());
    out = value.get<T>();
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!value.is_number()) wrong("a number");
    out = value.get<T>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!value.is_string()) wrong("a string");
    out = value.get<std::string>();
  } else if constexpr (std::is_enum_v<T>) {
    // true / false stand for the names "true" / "false" where a table has them (e.g. optim.bf16).
    std::string text = value.is_boolean() ? (value.get<bool>() ? "true" : "false") : "";
    if (value.is_string()) text = value.get<std::string>();
    else if (!value.is_boolean()) wrong("one of " + enum_choices<T>());
    try {
      out = parse_enum<T>(text);
    } catch (const ConfigError& e) {
      at.fail(name, e.what());
    }
  } else if constexpr (std::is_same_v<T, json>) {
    out = value;
  } else if constexpr (is_optional<T>::value) {
    typename T::value_type inner{};
    read_field(value, inner, at, name, unknown);
    out = std::move(inner);
  } else if constexpr (is_vector<T>::value) {
    using Item = typename T::value_type;
    // A lone value where a list belongs is a list of one (data.train: "a.json"; eos_token_id: 2).
    if (!value.is_array() && (value.is_string() || value.is_number())) {
      Item item{};
      read_field(value, item, at, name, unknown);
      out = {std::move(item)};
      return;
    }
    if (!value.is_array()) wrong("a list");
    T items;
    for (size_t i = 0; i < value.size(); ++i) {
      Item item{};
      read_field(value[i], item, at, name + "[" + std::to_string(i) + "]", unknown);
      items.push_back(std::move(item));
    }
    out = std::move(items);
  } else {
    static_assert(has_fields<T>::value, "a config field must be a scalar, string, enum, list, json or a struct "
                                        "with fields()");
    out = read_struct<T>(value, at.child(name), unknown);
  }
}

// ---- documentation -------------------------------------------------------------------------------------------

struct FieldDoc {
  std::string key;    // dotted, e.g. model.adapter.rank
  std::string type;   // integer, number, bool, string, "a, b, c" (an enum's names), list of ..., object
  json fallback;      // the default
  std::string doc;
  std::optional<Bounds> bounds{};  // numeric fields that declare their range
  bool numeric = false;            // an integer or number (or a list or optional of them)
  bool integer = false;
};

class FieldDocumenter {
 public:
  explicit FieldDocumenter(std::string prefix = "") : prefix_(std::move(prefix)) {}
  template <class T>
  void operator()(const char* key, const T& value, const char* doc, const Bounds& bounds) {
    (*this)(key, value, doc);
    rows.back().bounds = bounds;
  }
  template <class T>
  void operator()(const char* key, const T& value, const char* doc) {
    const std::string dotted = prefix_.empty() ? key : prefix_ + "." + key;
    using Inner = std::conditional_t<is_optional<T>::value, typename optional_inner<T>::type, T>;
    if constexpr (has_fields<Inner>::value) {
      rows.push_back({dotted, "object", json(), doc});
      FieldDocumenter nested(dotted);
      Inner fresh{};
      Inner::fields(fresh, nested);
      rows.insert(rows.end(), nested.rows.begin(), nested.rows.end());
    } else {
      rows.push_back({dotted, field_type_name<T>(), field_to_json(value), doc});
      using Scalar = scalar_of_t<T>;
      rows.back().numeric = std::is_arithmetic_v<Scalar> && !std::is_same_v<Scalar, bool>;
      rows.back().integer = std::is_integral_v<Scalar> && !std::is_same_v<Scalar, bool>;
    }
  }
  std::vector<FieldDoc> rows;

 private:
  template <class U>
  struct optional_inner {
    using type = U;
  };
  template <class U>
  struct optional_inner<std::optional<U>> {
    using type = U;
  };
  std::string prefix_;
};

template <class T>
std::vector<FieldDoc> describe_fields(const T& defaults = T{}) {
  FieldDocumenter documenter;
  T::fields(defaults, documenter);
  return documenter.rows;
}

// The rows as aligned text lines: "  model.adapter.rank  integer = 16  LoRA rank".
std::string fields_help(const std::vector<FieldDoc>& rows);

}  // namespace mole
