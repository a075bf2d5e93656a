// safetensors reading and writing; the format and its checks follow the reference implementation
// (huggingface/safetensors, safetensors/src/tensor.rs: Metadata::validate, serialize_to_file).
#include "core/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/json_config.h"

namespace mole {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Data in the file is little-endian and is copied as it is; a big-endian host would need a byte swap.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors reading assumes a little-endian host");

// The Rust implementation refuses headers above 100 MB; a larger one is a corrupt length, not a real header.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Dimensions of one tensor: real checkpoints have at most 5; torch's shape handling is quadratic in the rank.
constexpr int64_t kMaxTensorRank = 16;

struct DtypeEntry {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeEntry kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};
// In the safetensors spec but not read by mole: float8/6/4 and unsigned wider than a byte.
constexpr const char* kUnsupportedDtypes[] = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                              "F4",      "U16",     "U32",     "U64",     "C64"};

// The dtype's torch type, or a description of what is wrong with the name.
std::optional<torch::ScalarType> lookup_dtype(const std::string& name, std::string* why) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  bool in_spec = std::any_of(std::begin(kUnsupportedDtypes), std::end(kUnsupportedDtypes),
                             [&](const char* n) { return name == n; });
  *why = in_spec ? "dtype '" + name + "' is not supported by mole" : "unknown dtype '" + name + "'";
  return std::nullopt;
}

std::string range_str(const TensorInfo& t) {
  return "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ")";
}

// A JSON integer >= 0 (nlohmann keeps non-negative literals as unsigned, negative ones as signed).
bool non_negative_int(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

// Checks one header entry completely and returns it; `where` is "<path>: tensor '<name>'".
TensorInfo parse_entry(const std::string& where, const std::string& name, const json& entry) {
  auto fail = [&](const std::string& what) { return FormatError(where + ": " + what); };
  if (!entry.is_object()) throw fail("entry is not a JSON object");
  for (const auto& [key, value] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets") throw fail("unexpected field '" + key + "'");
  if (!entry.contains("dtype") || !entry["dtype"].is_string()) throw fail("'dtype' missing or not a string");
  if (!entry.contains("shape") || !entry["shape"].is_array()) throw fail("'shape' missing or not an array");
  if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
    throw fail("'data_offsets' missing or not an array of 2 integers");

  TensorInfo info;
  info.name = name;
  info.dtype = entry["dtype"].get<std::string>();
  std::string why;
  auto type = lookup_dtype(info.dtype, &why);
  if (!type) throw fail(why);

  // The byte count is computed with overflow checks: a hostile shape must not wrap around to a small size.
  uint64_t n_bytes = c10::elementSize(*type);
  if (entry["shape"].size() > size_t(kMaxTensorRank))  // torch's work grows with the rank, even for 0 bytes
    throw fail("shape has " + std::to_string(entry["shape"].size()) + " dimensions, more than " +
               std::to_string(kMaxTensorRank));
  for (const auto& dim : entry["shape"]) {
    uint64_t d = 0;
    if (!non_negative_int(dim, &d) || d > uint64_t(INT64_MAX))
      throw fail("shape " + json_excerpt(entry["shape"]) + " is not an array of non-negative integers");
    info.shape.push_back(int64_t(d));
    if (__builtin_mul_overflow(n_bytes, d, &n_bytes)) throw fail("shape " + json_excerpt(entry["shape"]) + " overflows");
  }
  if (!non_negative_int(entry["data_offsets"][0], &info.begin) ||
      !non_negative_int(entry["data_offsets"][1], &info.end))
    throw fail("'data_offsets' " + json_excerpt(entry["data_offsets"]) + " are not non-negative integers");
  if (info.begin > info.end) throw fail("'data_offsets' " + range_str(info) + " has begin > end");
  if (info.end - info.begin != n_bytes)
    throw fail("shape " + json_excerpt(entry["shape"]) + " x " + info.dtype + " is " + std::to_string(n_bytes) +
               " bytes but 'data_offsets' " + range_str(info) + " hold " + std::to_string(info.end - info.begin));
  return info;
}

// Parses and validates the header of a mapped file; returns the offset of the data area.
size_t parse_header(const std::string& path, const uint8_t* bytes, size_t size,
                    std::map<std::string, TensorInfo>& infos, std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) { return FormatError(path + ": " + what); };
  uint64_t header_len = 0;  // little-endian u64, assembled byte by byte so it reads right on any host
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len == 0) throw fail("header length is 0");
  if (header_len > kMaxHeaderBytes)
    throw fail("header length " + std::to_string(header_len) + " exceeds the 100 MB limit (corrupt file?)");
  if (header_len > size - 8)
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(size) + " bytes)");

  json header;
  try {
    header = parse_json_text(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + header_len));
  } catch (const json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail(std::string("header is not a JSON object but ") + header.type_name());

  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) throw fail("__metadata__ is not a JSON object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) throw fail("__metadata__ value for '" + key + "' is not a string");
        metadata[key] = value.get<std::string>();
      }
      continue;
    }
    infos[name] = parse_entry(path + ": tensor '" + name + "'", name, entry);
  }

  // Every range inside the data area, and no two overlapping. Zero-size tensors hold no bytes and cannot
  // overlap; the others, sorted by begin, overlap somewhere exactly when some neighbour pair does.
  const uint64_t data_size = size - 8 - header_len;
  std::vector<const TensorInfo*> by_begin;
  for (const auto& [name, info] : infos) {
    if (info.end > data_size)
      throw fail("tensor '" + name + "': data_offsets " + range_str(info) + " run past the end of the data area (" +
                 std::to_string(data_size) + " bytes; file truncated?)");
    if (info.end > info.begin) by_begin.push_back(&info);
  }
  std::sort(by_begin.begin(), by_begin.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_begin.size(); ++i) {
    const TensorInfo& prev = *by_begin[i - 1];
    const TensorInfo& cur = *by_begin[i];
    if (cur.begin < prev.end)
      throw fail("tensors '" + prev.name + "' " + range_str(prev) + " and '" + cur.name + "' " + range_str(cur) +
                 " overlap");
  }
  return size_t(8 + header_len);
}

std::string errno_str() { return std::strerror(errno); }

}  // namespace

torch::ScalarType safetensors_dtype(const std::string& name) {
  std::string why;
  auto type = lookup_dtype(name, &why);
  if (!type) throw FormatError(why);
  return *type;
}

std::string safetensors_dtype_name(torch::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return d.name;
  throw FormatError(std::string("torch dtype ") + c10::toString(type) + " has no safetensors name supported by mole");
}

// ---- SafetensorsFile ------------------------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw FormatError(path + ": cannot open: " + errno_str());
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FormatError(path + ": not a regular file");
  }
  map_size_ = size_t(st.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    throw FormatError(path + ": file is " + std::to_string(map_size_) +
                      " bytes, shorter than the 8-byte header length");
  }
  void* map = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) throw FormatError(path + ": mmap failed: " + std::strerror(map_errno));
  map_ = static_cast<const uint8_t*>(map);
  // The destructor does not run when the constructor throws, so unmap here on a bad header.
  try {
    data_begin_ = parse_header(path_, map_, map_size_, infos_, metadata_);
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(map_), map_size_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, info] : infos_) out.push_back(name);
  return out;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) throw FormatError(path_ + ": no tensor '" + name + "'");
  return it->second;
}

torch::Tensor SafetensorsFile::tensor(const std::string& name, std::optional<torch::ScalarType> dtype) const {
  const TensorInfo& t = info(name);
  // memcpy into a fresh tensor rather than from_blob(...).clone(): a tensor's begin offset need not be aligned
  // to its element size, and torch kernels may assume aligned data.
  // The file's data is little-endian, as is every host mole builds for (static_assert above): no byte swap.
  torch::Tensor out = torch::empty(t.shape, torch::TensorOptions().dtype(safetensors_dtype(t.dtype)));
  if (t.end > t.begin) {
    const uint8_t* from = map_ + data_begin_ + t.begin;
    std::memcpy(out.data_ptr(), from, t.end - t.begin);
    // The copied pages leave this process's resident set (the page cache keeps them; a later read faults them back
    // in): reading a 14 GB checkpoint then holds one copy of it in memory, not the copy plus the mapping.
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t first = uintptr_t(from) & ~(page - 1), last = uintptr_t(from) + (t.end - t.begin);
    ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  }
  if (dtype && *dtype != out.scalar_type()) out = out.to(*dtype);
  return out;
}

// ---- TensorStore ----------------------------------------------------------------------------------------------

TensorStore::TensorStore(const std::string& path) : path_(path) {
  if (!fs::exists(path)) throw FormatError(path + ": does not exist");
  fs::path index_path;
  fs::path single_path;
  if (fs::is_directory(path)) {
    // Same preference as transformers: a single model.safetensors, then the sharded index, then the one
    // *.safetensors file a folder holds (adapter_model.safetensors of a PEFT adapter).
    fs::path dir(path);
    if (fs::exists(dir / "model.safetensors")) {
      single_path = dir / "model.safetensors";
    } else if (fs::exists(dir / "model.safetensors.index.json")) {
      index_path = dir / "model.safetensors.index.json";
    } else {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(dir))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") found.push_back(e.path());
      if (found.size() != 1)
        throw FormatError(path + ": folder has no model.safetensors or model.safetensors.index.json and " +
                          std::to_string(found.size()) + " *.safetensors files (expected exactly one)");
      single_path = found[0];
    }
  } else if (fs::path(path).extension() == ".json") {
    index_path = path;
  } else {
    single_path = path;
  }

  if (!single_path.empty()) {
    files_.push_back(std::make_unique<SafetensorsFile>(single_path.string()));
    for (const auto& name : files_[0]->names()) where_[name] = 0;
    return;
  }

  // Sharded: {"weight_map": {tensor name: shard file name relative to the index's folder}}.
  const std::string index = index_path.string();
  json index_json;
  try {
    std::string text;
    try {
      text = read_input_file(index, "safetensors index", uint64_t(kMaxHeaderBytes));
    } catch (const std::runtime_error& e) {
      throw FormatError(e.what());
    }
    index_json = parse_json_text(text);
  } catch (const json::exception& e) {
    throw FormatError(index + ": not valid JSON: " + e.what());
  }
  if (!index_json.is_object() || !index_json.contains("weight_map") || !index_json["weight_map"].is_object())
    throw FormatError(index + ": no \"weight_map\" object");
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, file] : index_json["weight_map"].items()) {
    if (!file.is_string()) throw FormatError(index + ": weight_map entry for '" + name + "' is not a string");
    weight_map[name] = file.get<std::string>();
  }

  // Each shard opened once, in file name order so the file indices do not depend on JSON order.
  std::map<std::string, size_t> shard_index;  // shard file name -> index into files_
  for (const auto& [name, file] : weight_map) {
    if (shard_index.count(file)) continue;
    if (!fs::exists(index_path.parent_path() / file))
      throw FormatError(index + ": shard '" + file + "' (named for tensor '" + name + "') does not exist");
    shard_index[file] = 0;
  }
  for (auto& [file, i] : shard_index) {
    fs::path shard = index_path.parent_path() / file;
    i = files_.size();
    files_.push_back(std::make_unique<SafetensorsFile>(shard.string()));
    for (const auto& name : files_[i]->names()) {
      auto [it, inserted] = where_.emplace(name, i);
      if (!inserted)
        throw FormatError(index + ": tensor '" + name + "' is in two shards: " + files_[it->second]->path() +
                          " and " + files_[i]->path());
    }
  }
  for (const auto& [name, file] : weight_map)
    if (!files_[shard_index[file]]->contains(name))
      throw FormatError(index + ": tensor '" + name + "' is mapped to shard '" + file + "' but " +
                        files_[shard_index[file]]->path() + " does not contain it");
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;
}

const SafetensorsFile& TensorStore::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw FormatError(path_ + ": no tensor '" + name + "'");
  return *files_[it->second];
}

const TensorInfo& TensorStore::info(const std::string& name) const { return file_of(name).info(name); }

torch::Tensor TensorStore::tensor(const std::string& name, std::optional<torch::ScalarType> dtype) const {
  return file_of(name).tensor(name, dtype);
}

// ---- save_safetensors -----------------------------------------------------------------------------------------

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  auto fail = [&](const std::string& what) { return FormatError(path + ": " + what); };
  // ordered_json keeps the header in the order given, __metadata__ first, as the Rust writer does.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;

  std::set<std::string> seen;
  std::vector<torch::Tensor> cpu;  // contiguous CPU copies, in the order given
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty()) throw fail("empty tensor name");
    if (name == "__metadata__") throw fail("'__metadata__' is reserved and cannot name a tensor");
    if (!seen.insert(name).second) throw fail("tensor name '" + name + "' given twice");
    if (!tensor.defined()) throw fail("tensor '" + name + "' is undefined");
    std::string dtype;
    try {
      dtype = safetensors_dtype_name(tensor.scalar_type());
    } catch (const FormatError& e) {
      throw fail("tensor '" + name + "': " + e.what());
    }
    torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t n_bytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + n_bytes}}};
    offset += n_bytes;
    cpu.push_back(t);
  }

  // Pad with spaces so the data area starts 8-byte aligned (8 + N a multiple of 8), like the Rust writer.
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = uint8_t(uint64_t(text.size()) >> (8 * i));  // little-endian u64

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw fail("cannot create " + tmp + ": " + errno_str());
  bool ok = std::fwrite(len_bytes, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (size_t i = 0; ok && i < cpu.size(); ++i) {
    const size_t n = cpu[i].numel() * cpu[i].element_size();
    ok = n == 0 || std::fwrite(cpu[i].data_ptr(), 1, n, f) == n;
  }
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  int err = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && std::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw fail(std::string("write failed: ") + std::strerror(err));
  }

  // Make the rename itself durable. Best effort: the new file is already complete under its name, and some
  // filesystems refuse fsync on a directory.
  fs::path parent = fs::path(path).parent_path();
  int dir_fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace mole
