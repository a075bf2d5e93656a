// Reading config fields from Hugging Face style JSON with errors that name the file and the field.
#pragma once

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
