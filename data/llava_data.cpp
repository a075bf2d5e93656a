#include "data/llava_data.h"

#include <fstream>
#include <sstream>

namespace mole {

using json = nlohmann::json;

void SkipReport::add(const std::string& reason, const std::string& record_id) {
  counts_[reason] += 1;
  auto& ids = examples_[reason];
  if (ids.size() < kExamples) ids.push_back(record_id);
}

void SkipReport::merge(const SkipReport& other) {
  for (const auto& [reason, n] : other.counts_) {
    counts_[reason] += n;
    auto& ids = examples_[reason];
    for (const auto& id : other.examples_.at(reason))
      if (ids.size() < kExamples) ids.push_back(id);
  }
}

int64_t SkipReport::total() const {
  int64_t n = 0;
  for (const auto& [reason, count] : counts_) n += count;
  return n;
}

json SkipReport::to_json() const {
  json reasons = json::object();
  for (const auto& [reason, n] : counts_) reasons[reason] = {{"count", n}, {"first_ids", examples_.at(reason)}};
  return {{"total", total()}, {"reasons", reasons}};
}

SkipReport SkipReport::from_json(const json& j) {
  SkipReport r;
  try {
    for (const auto& [reason, entry] : j.at("reasons").items()) {
      r.counts_[reason] = entry.at("count").get<int64_t>();
      r.examples_[reason] = entry.at("first_ids").get<std::vector<std::string>>();
    }
  } catch (const json::exception& e) {
    throw std::runtime_error(std::string("skip report: ") + e.what());
  }
  return r;
}

std::string SkipReport::to_text() const {
  std::ostringstream out;
  for (const auto& [reason, n] : counts_) {
    out << "  " << n << " x " << reason << " (e.g.";
    for (const auto& id : examples_.at(reason)) out << " " << id;
    out << ")\n";
  }
  return out.str();
}

std::string parse_llava_record(const json& j, int64_t index, LlavaRecord* out) {
  out->index = index;
  out->id = "#" + std::to_string(index);
  if (!j.is_object()) return "record is not a JSON object";
  if (j.contains("id")) {
    const auto& id = j["id"];
    out->id = id.is_string() ? id.get<std::string>() : id.dump();
  }
  out->images.clear();
  if (j.contains("image") && !j["image"].is_null()) {
    const auto& image = j["image"];
    if (image.is_string()) {
      out->images.push_back(image.get<std::string>());
    } else if (image.is_array()) {
      for (const auto& p : image) {
        if (!p.is_string()) return "image path is not a string";
        out->images.push_back(p.get<std::string>());
      }
    } else {
      return "image path is not a string";
    }
  }
  if (!j.contains("conversations") || !j["conversations"].is_array()) return "no conversations";
  const auto& conv = j["conversations"];
  if (conv.empty()) return "empty conversation";
  out->turns.clear();
  for (size_t i = 0; i < conv.size(); ++i) {
    const auto& turn = conv[i];
    if (!turn.is_object() || !turn.contains("value") || !turn["value"].is_string())
      return "conversation turn " + std::to_string(i) + " has no string value";
    std::string role = turn.contains("from") && turn["from"].is_string() ? turn["from"].get<std::string>() : "";
    if (role != "human" && role != "gpt") return "unknown role '" + role + "'";
    out->turns.push_back({role, turn["value"].get<std::string>()});
  }
  int64_t tags = count_image_tags(out->turns);
  if (tags != static_cast<int64_t>(out->images.size()))
    return "<image> tags (" + std::to_string(tags) + ") do not match images (" + std::to_string(out->images.size()) +
           ")";
  return "";
}

std::vector<std::string> split_json_array(const std::string& text, const std::string& where) {
  size_t i = text.find_first_not_of(" \t\r\n");
  if (i == std::string::npos || text[i] != '[') throw DataError(where + ": not a JSON list of records");
  std::vector<std::string> elements;
  int depth = 0;
  bool in_string = false, escaped = false;
  size_t start = i + 1;
  for (++i; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') ++depth;
    else if (c == '}' || c == ']') {
      if (depth == 0) {  // the closing bracket of the list
        std::string last = text.substr(start, i - start);
        if (last.find_first_not_of(" \t\r\n") != std::string::npos) elements.push_back(last);
        if (text.find_first_not_of(" \t\r\n", i + 1) != std::string::npos)
          throw DataError(where + ": text after the end of the JSON list");
        return elements;
      }
      --depth;
    } else if (c == ',' && depth == 0) {
      elements.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  throw DataError(where + ": the JSON list is not closed (truncated file?)");
}

LlavaDataset read_llava_dataset(const std::string& path, bool strict) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) throw DataError(path + ": empty file");

  std::vector<std::string> items;
  if (text[first] == '[') {
    items = split_json_array(text, path);
  } else {  // JSON Lines: one record a line, blank lines ignored
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line))
      if (line.find_first_not_of(" \t\r\n") != std::string::npos) items.push_back(line);
  }

  LlavaDataset data;
  data.path = path;
  int64_t llava_shaped = 0;  // records that at least have conversations: tells a wrong file from bad records
  for (size_t i = 0; i < items.size(); ++i) {
    ++data.n_read;
    LlavaRecord record;
    std::string problem;
    try {
      json j = json::parse(items[i]);
      if (j.is_object() && j.contains("conversations")) ++llava_shaped;
      problem = parse_llava_record(j, static_cast<int64_t>(i), &record);
    } catch (const json::exception& e) {
      record.id = "#" + std::to_string(i);
      std::string what = e.what();
      problem = what.find("UTF-8") != std::string::npos ? "invalid UTF-8" : "malformed JSON record";
    }
    if (problem.empty()) {
      data.records.push_back(std::move(record));
      continue;
    }
    if (strict) throw DataError(path + ": record " + record.id + " (index " + std::to_string(i) + "): " + problem);
    data.skipped.add(problem, record.id);
  }
  if (data.n_read == 0) throw DataError(path + ": no records");
  if (llava_shaped == 0)
    throw DataError(path + ": no record has \"conversations\": not a LLaVA conversation file");
  return data;
}

}  // namespace mole
