// Shared by the harnesses: the input written to a file of this process (the readers under test take paths).
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include <unistd.h>

namespace mole::fuzz {

inline std::string input_file(const uint8_t* data, size_t size, const char* suffix) {
  const std::string path = "/tmp/mole_fuzz_" + std::to_string(::getpid()) + suffix;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return path;
}

}  // namespace mole::fuzz
