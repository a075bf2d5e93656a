// A safetensors file: header validation, then every tensor read and converted to float32. Any error must be a
// FormatError (or another std::exception with a message); a crash or a sanitizer report is a finding.
#include <cstdint>

#include <torch/torch.h>

#include "core/safetensors.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mole::fuzz::input_file(data, size, ".safetensors");
  try {
    mole::SafetensorsFile file(path);
    for (const std::string& name : file.names()) (void)file.tensor(name, torch::kFloat32).sum();
  } catch (const std::exception&) {
  }
  return 0;
}
