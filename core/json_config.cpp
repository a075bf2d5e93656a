#include "core/json_config.h"

#include <cstdio>
#include <filesystem>
#include <sys/stat.h>
#include <unistd.h>

namespace mole {

json parse_json_text(const char* begin, const char* end) {
  int depth = 0;
  bool in_string = false;
  for (const char* p = begin; p < end; ++p) {
    const char c = *p;
    if (in_string) {
      if (c == '\\') ++p;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        throw json::parse_error::create(101, size_t(p - begin) + 1,
                                        "nested deeper than " + std::to_string(kMaxJsonDepth) + " levels", nullptr);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return json::parse(begin, end);
}

std::string json_excerpt(const json& value, size_t max_chars) {
  std::string text = value.dump();  // bounded depth: every value mole holds came through parse_json_text
  if (text.size() > max_chars) text = text.substr(0, max_chars) + "...";
  return text;
}

std::string read_input_file(const std::string& path, const std::string& what, uint64_t max_bytes) {
  auto fail = [&](const std::string& why) { return std::runtime_error(what + " " + path + ": " + why); };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw fail("cannot open (missing or unreadable)");
  if (S_ISDIR(st.st_mode)) throw fail("is a folder, not a file");
  const bool regular = S_ISREG(st.st_mode), pipe = S_ISFIFO(st.st_mode);
  if (!regular && !pipe) throw fail("is not a regular file (a device or socket cannot be read as data)");
  if (regular && uint64_t(st.st_size) > max_bytes)
    throw fail("is " + std::to_string(st.st_size) + " bytes, more than the " + std::to_string(max_bytes) +
               "-byte limit for a file read whole");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw fail("cannot open (missing or unreadable)");
  std::string text;
  if (regular) text.reserve(size_t(st.st_size));
  char buffer[1 << 16];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, size_t(in.gcount()));
    if (text.size() > max_bytes)
      throw fail("holds more than the " + std::to_string(max_bytes) + "-byte limit for a file read whole");
  }
  return text;
}

json read_json_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw ConfigError(path + ": is a folder, not a JSON file");
  std::string text;
  try {
    text = read_input_file(path, "JSON file");
  } catch (const std::runtime_error& e) {
    throw ConfigError(e.what());
  }
  try {
    return parse_json_text(text);
  } catch (const json::exception& e) {
    throw ConfigError(path + ": not valid JSON: " + e.what());
  }
}

void write_json_file(const std::string& path, const json& value) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  std::string text = value.dump(2) + "\n";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw ConfigError(path + ": cannot write");
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw ConfigError(path + ": write failed");
  }
}

}  // namespace mole
