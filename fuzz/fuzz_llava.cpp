// A LLaVA data file (JSON list or JSON Lines): every record parsed, bad ones skipped and counted. Only a file with
// no LLaVA-shaped record at all may be an error (DataError); a crash or a sanitizer report is a finding.
#include <cstdint>

#include "data/llava_data.h"
#include "fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mole::fuzz::input_file(data, size, ".json");
  try {
    const mole::LlavaDataset d = mole::read_llava_dataset(path);
    (void)d.skipped.to_json().dump();
  } catch (const std::exception&) {
  }
  return 0;
}
