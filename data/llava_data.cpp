#include "data/llava_data.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/json_config.h"

namespace mole {

using json = nlohmann::json;

void SkipReport::add(const std::string& reason, const std::string& record_id, const std::string& file) {
  counts_[reason] += 1;
  auto& examples = examples_[reason];
  if (examples.size() < kExamples) examples.push_back({record_id, file});
}

void SkipReport::merge(const SkipReport& other) {
  for (const auto& [reason, n] : other.counts_) {
    counts_[reason] += n;
    auto& examples = examples_[reason];
    for (const auto& e : other.examples_.at(reason))
      if (examples.size() < kExamples) examples.push_back(e);
  }
}

int64_t SkipReport::total() const {
  int64_t n = 0;
  for (const auto& [reason, count] : counts_) n += count;
  return n;
}

json SkipReport::to_json() const {
  json reasons = json::object();
  for (const auto& [reason, n] : counts_) {
    json ids = json::array(), files = json::array();
    for (const auto& e : examples_.at(reason)) {
      ids.push_back(e.id);
      files.push_back(e.file);
    }
    reasons[reason] = {{"count", n}, {"first_ids", ids}, {"first_files", files}};
  }
  return {{"total", total()}, {"reasons", reasons}};
}

SkipReport SkipReport::from_json(const json& j) {
  SkipReport r;
  try {
    for (const auto& [reason, entry] : j.at("reasons").items()) {
      r.counts_[reason] = entry.at("count").get<int64_t>();
      const auto ids = entry.at("first_ids").get<std::vector<std::string>>();
      const auto files = entry.value("first_files", std::vector<std::string>(ids.size()));
      if (files.size() != ids.size()) throw std::runtime_error("first_files and first_ids differ in length");
      for (size_t i = 0; i < ids.size(); ++i) r.examples_[reason].push_back({ids[i], files[i]});
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
    const auto& examples = examples_.at(reason);
    for (size_t i = 0; i < examples.size(); ++i) {
      out << " " << examples[i].id;
      // the file after the last id it holds: "(e.g. a b in x.json, c in y.json)"
      const bool last_of_file = i + 1 == examples.size() || examples[i + 1].file != examples[i].file;
      if (last_of_file && !examples[i].file.empty()) out << " in " << examples[i].file << (i + 1 < examples.size() ? "," : "");
    }
    out << ")\n";
  }
  return out.str();
}

namespace {

// The role names of the record forms mole reads, mapped onto LLaVA's: ShareGPT / LLaVA ("human", "gpt") and the
// OpenAI / LLaMA-Factory "messages" form ("user", "assistant"); "system" in both. "" when unknown.
std::string canonical_role(const std::string& role) {
  if (role == "human" || role == "user") return "human";
  if (role == "gpt" || role == "assistant") return "gpt";
  if (role == "system") return "system";
  return "";
}

// A turn's text: a string, or OpenAI's list of parts ({"type": "text", "text": ...} and {"type": "image"}, which
// stands where its image goes). Returns false when it is neither.
bool turn_text(const json& value, std::string* text) {
  if (value.is_string()) {
    *text = value.get<std::string>();
    return true;
  }
  if (!value.is_array()) return false;
  text->clear();
  for (const auto& part : value) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) return false;
    const std::string type = part["type"].get<std::string>();
    if (type == "text" && part.contains("text") && part["text"].is_string()) *text += part["text"].get<std::string>();
    else if (type == "image" || type == "image_url") *text += "<image>";
    else return false;
  }
  return true;
}

}  // namespace

std::string parse_llava_record(const json& j, int64_t index, LlavaRecord* out) {
  out->index = index;
  out->id = "#" + std::to_string(index);
  if (!j.is_object()) return "record is not a JSON object";
  if (j.contains("id")) {
    const auto& id = j["id"];
    out->id = id.is_string() ? id.get<std::string>() : json_excerpt(id, 64);
  }
  out->category.clear();
  if (j.contains("category") && j["category"].is_string()) out->category = j["category"].get<std::string>();
  out->images.clear();
  for (const char* key : {"image", "images"}) {  // LLaVA writes "image"; LLaMA-Factory's sharegpt "images"
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!out->images.empty()) return "both \"image\" and \"images\"";
    const auto& image = j[key];
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
  const char* key = j.contains("conversations") ? "conversations" : "messages";
  if (!j.contains(key) || !j[key].is_array()) return "no conversations";
  const auto& conv = j[key];
  if (conv.empty()) return "empty conversation";
  out->turns.clear();
  for (size_t i = 0; i < conv.size(); ++i) {
    const auto& turn = conv[i];
    // "from"/"value" (LLaVA, ShareGPT) or "role"/"content" (messages), in either list
    const bool sharegpt = turn.is_object() && turn.contains("from");
    const char* role_key = sharegpt ? "from" : "role";
    const char* text_key = sharegpt ? "value" : "content";
    Turn t;
    if (!turn.is_object() || !turn.contains(text_key) || !turn_text(turn[text_key], &t.text))
      return "conversation turn " + std::to_string(i) + " has no string value";
    const std::string role = turn.contains(role_key) && turn[role_key].is_string() ? turn[role_key].get<std::string>() : "";
    t.role = canonical_role(role);
    if (t.role.empty()) return "unknown role '" + role + "'";
    if (t.role == "system" && i > 0) return "a system turn after the first (turn " + std::to_string(i) + ")";
    out->turns.push_back(std::move(t));
  }
  // LLaVA's preprocess: a conversation whose first turn (after the system one) is not the human's loses it
  // (`if roles[source[0]["from"]] != conv.roles[0]: source = source[1:]`).
  const size_t first = out->turns[0].role == "system" ? 1 : 0;
  if (out->turns.size() > first && out->turns[first].role == "gpt")
    out->turns.erase(out->turns.begin() + std::ptrdiff_t(first));
  int64_t tags = count_image_tags(out->turns);
  const int64_t n_images = int64_t(out->images.size());
  if (tags == 0 && n_images > 0) {
    // An image without a tag goes to the start of the first human turn, one "<image>\n" per image (LLaVA).
    auto human = std::find_if(out->turns.begin(), out->turns.end(), [](const Turn& t) { return t.role == "human"; });
    if (human == out->turns.end()) return "no human turn";
    std::string tags_text;
    for (int64_t k = 0; k < n_images; ++k) tags_text += "<image>\n";
    human->text = tags_text + human->text;
    tags = n_images;
  }
  if (tags != n_images)
    return "<image> tags (" + std::to_string(tags) + ") do not match images (" + std::to_string(n_images) + ")";
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
  std::string text;
  try {
    text = read_input_file(path, "LLaVA data");
  } catch (const std::runtime_error& e) {
    throw DataError(e.what());
  }
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
      json j = parse_json_text(items[i]);
      if (j.is_object() && (j.contains("conversations") || j.contains("messages"))) ++llava_shaped;
      problem = parse_llava_record(j, static_cast<int64_t>(i), &record);
    } catch (const json::exception& e) {
      record.id = "#" + std::to_string(i);
      std::string what = e.what();
      problem = what.find("UTF-8") != std::string::npos          ? "invalid UTF-8"
                : what.find("nested deeper") != std::string::npos ? "JSON nested too deep"
                                                                    : "malformed JSON record";
    }
    record.file = path;
    if (problem.empty()) {
      data.records.push_back(std::move(record));
      continue;
    }
    if (strict) throw DataError(path + ": record " + record.id + " (index " + std::to_string(i) + "): " + problem);
    data.skipped.add(problem, record.id, path);
  }
  if (data.n_read == 0) throw DataError(path + ": no records");
  if (llava_shaped == 0)
    throw DataError(path + ": no record has \"conversations\" or \"messages\": not a LLaVA conversation file");
  return data;
}

}  // namespace mole
