// safetensors reading (mmap, single file or sharded) and atomic writing.
// Format: https://github.com/huggingface/safetensors (8-byte little-endian header length N, N bytes of JSON
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data area;
// offsets are relative to the data area).
// Every error is a mole::FormatError (std::runtime_error) whose message names the file and, where one is at
// fault, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <torch/types.h>

namespace mole {

struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One tensor's entry in a safetensors header.
struct TensorInfo {
  std::string name;
  std::string dtype;            // as written in the file: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data area
};

// Known safetensors dtype names -> torch scalar types. Throws FormatError for an unknown name.
torch::ScalarType safetensors_dtype(const std::string& name);
std::string safetensors_dtype_name(torch::ScalarType type);

// One .safetensors file, memory-mapped read-only; the header is validated completely on open:
// header length bounded (<= 100 MB) and inside the file, header a JSON object of objects, every dtype known,
// shape product x element size == byte range, ranges inside the data area and not overlapping.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws FormatError naming file and tensor
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // A tensor that owns its memory (copied out of the mapping), converted to `dtype` when given.
  torch::Tensor tensor(const std::string& name, std::optional<torch::ScalarType> dtype = std::nullopt) const;

 private:
  std::string path_;
  const uint8_t* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_begin_ = 0;  // 8 + header length
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a checkpoint: one .safetensors file, or a folder with model.safetensors or a sharded
// model.safetensors.index.json ({"weight_map": {name: file}}), or an index file itself. Every tensor the index
// names must be in the shard it names; a name in two files is an error.
class TensorStore {
 public:
  explicit TensorStore(const std::string& path);
  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  const SafetensorsFile& file_of(const std::string& name) const;
  torch::Tensor tensor(const std::string& name, std::optional<torch::ScalarType> dtype = std::nullopt) const;
  size_t n_files() const { return files_.size(); }

 private:
  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;  // tensor name -> index into files_
};

// Writes tensors (any device, any supported dtype; made contiguous, copied to CPU) with string metadata.
// Atomic: written to PATH.tmp.<pid>, fsync'ed, renamed over PATH, and the folder fsync'ed, so a crash leaves
// either the old file or the new one under PATH, never half of one. Names must be unique and non-empty.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace mole
