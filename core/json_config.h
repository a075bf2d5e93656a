// Reading config fields from Hugging Face style JSON with errors that name the file and the field.
#pragma once

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace mole {

using json = nlohmann::json;

// Error in a config or other JSON file given by the user; the message names the file and field.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The deepest nesting read from any JSON a user brings (configs, safetensors headers and indexes, LLaVA records,
// tokenizer files); real files stay under 10. nlohmann's parser itself is iterative, but copying, comparing and
// dumping a value recurse, so a value nested 10^6 deep would overflow the stack after parsing.
constexpr int kMaxJsonDepth = 128;
// The largest input file read into memory whole (a LLaVA-665k JSON is about 1 GB).
constexpr uint64_t kMaxInputFileBytes = uint64_t(16) << 30;

// Parses [begin, end) as JSON after a linear pass that refuses nesting deeper than kMaxJsonDepth, with a
// json::parse_error ("... nested deeper than 128 levels") that every caller's json::exception handler already
// turns into its own message.
json parse_json_text(const char* begin, const char* end);
inline json parse_json_text(const std::string& text) { return parse_json_text(text.data(), text.data() + text.size()); }

// A value as short JSON text for an error message: dump() cut to max_chars (with "..."), so a huge or hostile
// value from a file never fills a message.
std::string json_excerpt(const json& value, size_t max_chars = 80);

// The bytes of a whole input file. A regular file larger than max_bytes, a folder, a device (/dev/zero) or a
// socket is refused up front; a pipe is read up to max_bytes. Errors are std::runtime_error "<what> <path>: ...".
std::string read_input_file(const std::string& path, const std::string& what = "file",
                            uint64_t max_bytes = kMaxInputFileBytes);

// Parses a whole JSON file; a missing or malformed file is a ConfigError naming it.
json read_json_file(const std::string& path);
// Writes `value` to `path` atomically (temp file, fsync, rename).
void write_json_file(const std::string& path, const json& value);

// obj[key] as T when present and not null, else `fallback`; a value of the wrong type is a ConfigError
// "<where>: field '<key>' ...".
template <typename T>
T field_or(const json& obj, const std::string& key, const T& fallback, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception& e) {
    throw ConfigError(where + ": field '" + key + "' has the wrong type (" + it->type_name() + ")");
  }
}

// obj[key] as T; missing is a ConfigError.
template <typename T>
T field(const json& obj, const std::string& key, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) throw ConfigError(where + ": required field '" + key + "' is missing");
  return field_or<T>(obj, key, T{}, where);
}

}  // namespace mole
