// LLaVA conversation datasets (llava_v1_5_mix665k.json style): a JSON list or JSON Lines of records
//   {"id": "...", "image": "coco/train2017/x.jpg", "conversations": [{"from": "human", "value": "<image>\n..."},
//                                                                   {"from": "gpt", "value": "..."}, ...]}
// "image" is relative to an image folder given at run time; text-only records have none. A list of images
// ("image": [...]) is read too. A bad record never ends a run: it is skipped and counted by reason (with the
// first few ids of each), unless strict mode turns it into an error. A whole file that is not LLaVA-shaped
// is an error at start-up.
// Reference: docs/FORMATS.md; LLaVA llava/train/train.py (LazySupervisedDataset).
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "language/conversation.h"

namespace mole {

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct LlavaRecord {
  int64_t index = 0;                // position in the file (0-based), for messages
  std::string id;                   // the record's "id" (or "#<index>" when it has none)
  std::string file;                 // the file it was read from, for messages
  std::vector<std::string> images;  // relative paths as written, 0 or more
  std::vector<Turn> turns;
  std::string category;             // the record's "category" when it is a string (its task family), else ""
};

// Why records were skipped, with the first few records (id and file) of each reason (for reports and logs).
class SkipReport {
 public:
  void add(const std::string& reason, const std::string& record_id, const std::string& file = "");
  void merge(const SkipReport& other);
  int64_t total() const;
  const std::map<std::string, int64_t>& counts() const { return counts_; }
  // {"total": n, "reasons": {reason: {"count": n, "first_ids": [...], "first_files": [...]}}}: the files of the
  // example records, one for each id.
  nlohmann::json to_json() const;
  static SkipReport from_json(const nlohmann::json& j);  // reads to_json()'s form back
  std::string to_text() const;      // one line per reason: "  n x reason (e.g. id1 id2 in file)"
  static constexpr size_t kExamples = 5;

 private:
  struct Example {
    std::string id, file;
  };
  std::map<std::string, int64_t> counts_;
  std::map<std::string, std::vector<Example>> examples_;
};

// Parses one record into LLaVA's shape; returns the problem ("" when fine). Read as LLaVA and its successors do:
//   - turns under "conversations" or "messages", each {"from", "value"} or {"role", "content"}; roles human|user,
//     gpt|assistant and system (first turn only); a content may be OpenAI's list of parts, {"type": "text"} and
//     {"type": "image"} (an <image> tag where it stands);
//   - images under "image" (or "images"): one path or a list, in the order of the tags;
//   - a first turn (after a system turn) that is the assistant's is dropped, as LLaVA's preprocess does;
//   - an image with no tag anywhere: "<image>\n" per image at the start of the first human turn.
// Problems: "record is not a JSON object", "no conversations", "empty conversation", "unknown role 'x'",
// "a system turn after the first (turn N)", "conversation turn N has no string value", "<image> tags (2) do not
// match images (1)", "image path is not a string", "both \"image\" and \"images\"", "no human turn".
std::string parse_llava_record(const nlohmann::json& j, int64_t index, LlavaRecord* out);

struct LlavaDataset {
  std::string path;
  std::vector<LlavaRecord> records;  // the good ones, in file order
  int64_t n_read = 0;                // records in the file
  SkipReport skipped;                // records left out, by reason
};

// Reads a JSON list (".json") or JSON Lines (any other ending, or a file whose first non-space byte is not
// '['). Each record is parsed on its own, so one malformed record (bad JSON, invalid UTF-8) costs only that
// record. Throws DataError naming the file when it cannot be read, is empty, or when no record at all has the
// LLaVA shape (the wrong file was given). strict: the first bad record is a DataError naming it.
LlavaDataset read_llava_dataset(const std::string& path, bool strict = false);

// Splits the top level of a JSON array text into the texts of its elements, without parsing them (strings
// and nesting are respected). Throws DataError when the text is not an array.
std::vector<std::string> split_json_array(const std::string& text, const std::string& where);

}  // namespace mole
