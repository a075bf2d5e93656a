#include "core/json_config.h"

#include <cstdio>
#include <filesystem>
#include <unistd.h>

namespace mole {

json read_json_file(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw ConfigError(path + ": is a folder, not a JSON file");
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open (missing or unreadable)");
  try {
    return json::parse(in);
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
