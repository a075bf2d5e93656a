#include "data/families.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

namespace mole {

MOLE_ENUM_NAMES(FamilySource, "family source", {FamilySource::kAuto, "auto"}, {FamilySource::kCategory, "category"},
                {FamilySource::kFile, "file"}, {FamilySource::kImageFolder, "image_folder"},
                {FamilySource::kNone, "none"})

namespace {

std::string image_folder(const LlavaRecord& r) {
  if (r.images.empty()) return "text";
  const std::string& path = r.images.front();
  const size_t slash = path.find_first_of("/\\");
  return slash == std::string::npos || slash == 0 ? "." : path.substr(0, slash);
}

// Each file's stem, or its whole path where two files share the stem.
std::map<std::string, std::string> file_names(const std::vector<LlavaRecord>& records) {
  std::map<std::string, std::set<std::string>> by_stem;
  for (const LlavaRecord& r : records) by_stem[std::filesystem::path(r.file).stem().string()].insert(r.file);
  std::map<std::string, std::string> out;
  for (const auto& [stem, files] : by_stem)
    for (const std::string& f : files) out[f] = files.size() == 1 ? stem : f;
  return out;
}

template <class Key>
size_t distinct(const std::vector<LlavaRecord>& records, Key key) {
  std::set<std::string> seen;
  for (const LlavaRecord& r : records) seen.insert(key(r));
  return seen.size();
}

}  // namespace

RecordFamilies assign_families(const std::vector<LlavaRecord>& records, FamilySource source) {
  auto file_of = [](const LlavaRecord& r) { return r.file; };
  if (source == FamilySource::kAuto) {
    bool any_category = false;
    for (const LlavaRecord& r : records) any_category = any_category || !r.category.empty();
    source = any_category                          ? FamilySource::kCategory
             : distinct(records, file_of) > 1      ? FamilySource::kFile
             : distinct(records, image_folder) > 1 ? FamilySource::kImageFolder
                                                   : FamilySource::kNone;
  }
  RecordFamilies out;
  out.source = source;
  if (source == FamilySource::kNone || records.empty()) return out;
  const std::map<std::string, std::string> files = source == FamilySource::kFile ? file_names(records)
                                                                                 : std::map<std::string, std::string>{};
  std::vector<std::string> per_record;
  per_record.reserve(records.size());
  for (const LlavaRecord& r : records) {
    if (source == FamilySource::kCategory) per_record.push_back(r.category.empty() ? "uncategorised" : r.category);
    else if (source == FamilySource::kFile) per_record.push_back(files.at(r.file));
    else per_record.push_back(image_folder(r));
  }
  std::map<std::string, int64_t> count;
  for (const std::string& name : per_record) ++count[name];
  if (count.size() > size_t(kMaxFamilies)) {  // the most frequent keep their names (ties: by name), the rest pool
    std::vector<std::pair<int64_t, std::string>> by_size;
    for (const auto& [name, n] : count) by_size.emplace_back(-n, name);
    std::sort(by_size.begin(), by_size.end());
    std::map<std::string, int64_t> kept;
    for (size_t i = 0; i + 1 < size_t(kMaxFamilies); ++i) kept[by_size[i].second] = -by_size[i].first;
    for (std::string& name : per_record)
      if (!kept.count(name)) name = "other";
    count.clear();
    for (const std::string& name : per_record) ++count[name];
  }
  std::map<std::string, int64_t> index;
  for (const auto& [name, n] : count) index[name] = int64_t(out.names.size()), out.names.push_back(name);
  out.of.reserve(per_record.size());
  for (const std::string& name : per_record) out.of.push_back(index.at(name));
  return out;
}

}  // namespace mole
