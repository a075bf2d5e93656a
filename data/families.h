// Which task family each training record belongs to, for the routing-by-family statistics a run logs
// (pipelines/trainer.cpp, moe/family_routing.h): do the experts specialise by what the data is about?
//   auto          the records' "category" when some have one; else the training file when there are several;
//                 else the first image's top folder when the images sit in several (LLaVA-665k's coco, gqa,
//                 ocr_vqa, textvqa, vg; "text" for records without an image); else none (nothing logged)
//   category      the record's "category" string ("uncategorised" when it has none)
//   file          the training file's name (its stem; the path when two files share a stem)
//   image_folder  the first image's top folder ("text" without an image, "." for an image at the top level)
//   none          no family statistics
// At most kMaxFamilies families: beyond that the most frequent kMaxFamilies - 1 keep their names and the rest are
// counted together as "other" (a per-record category would otherwise make a table as long as the data).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"
#include "data/llava_data.h"

namespace mole {

enum class FamilySource { kAuto, kCategory, kFile, kImageFolder, kNone };
template <>
const EnumTable<FamilySource>& enum_table<FamilySource>();  // auto | category | file | image_folder | none

constexpr int64_t kMaxFamilies = 32;

struct RecordFamilies {
  FamilySource source = FamilySource::kNone;  // what auto resolved to
  std::vector<std::string> names;             // the families, sorted; empty: no statistics
  std::vector<int64_t> of;                    // per record: its index into names (empty when names is)
};

RecordFamilies assign_families(const std::vector<LlavaRecord>& records, FamilySource source);

}  // namespace mole
