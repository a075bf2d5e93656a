#include "eval/vqa_data.h"

#include <cctype>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "core/json_config.h"
#include "data/llava_data.h"

namespace mole {

namespace {

const json& array_field(const json& doc, const char* key, const std::string& path) {
  if (!doc.is_object() || !doc.contains(key) || !doc[key].is_array())
    throw DataError(path + ": expected a JSON object with a \"" + key + "\" list");
  return doc[key];
}

template <typename T>
T get(const json& entry, const char* key, const std::string& where) {
  if (!entry.is_object() || !entry.contains(key)) throw DataError(where + ": no \"" + key + "\"");
  try {
    return entry[key].get<T>();
  } catch (const json::exception&) {
    throw DataError(where + ": \"" + key + "\" has the wrong type");
  }
}

json parse_file(const std::string& path) {
  try {
    return read_json_file(path);
  } catch (const ConfigError& e) {
    throw DataError(e.what());
  }
}

}  // namespace

std::vector<VqaQuestion> read_vqav2_questions(const std::string& path) {
  json doc = parse_file(path);
  std::vector<VqaQuestion> out;
  const auto& list = array_field(doc, "questions", path);
  for (size_t i = 0; i < list.size(); ++i) {
    std::string where = path + ": questions[" + std::to_string(i) + "]";
    VqaQuestion q;
    q.question_id = get<int64_t>(list[i], "question_id", where);
    q.image_id = get<int64_t>(list[i], "image_id", where);
    q.text = get<std::string>(list[i], "question", where);
    out.push_back(std::move(q));
  }
  return out;
}

std::map<int64_t, VqaAnnotation> read_vqav2_annotations(const std::string& path) {
  json doc = parse_file(path);
  std::map<int64_t, VqaAnnotation> out;
  const auto& list = array_field(doc, "annotations", path);
  for (size_t i = 0; i < list.size(); ++i) {
    std::string where = path + ": annotations[" + std::to_string(i) + "]";
    const auto& e = list[i];
    VqaAnnotation a;
    a.question_id = get<int64_t>(e, "question_id", where);
    a.image_id = get<int64_t>(e, "image_id", where);
    a.question_type = e.value("question_type", "");
    a.answer_type = e.value("answer_type", "");
    a.multiple_choice_answer = e.value("multiple_choice_answer", "");
    for (const auto& ans : get<json>(e, "answers", where)) {
      if (!ans.is_object() || !ans.contains("answer") || !ans["answer"].is_string())
        throw DataError(where + ": an answer without a string \"answer\"");
      a.answers.push_back(ans["answer"].get<std::string>());
    }
    if (!out.emplace(a.question_id, a).second)
      throw DataError(where + ": question_id " + std::to_string(a.question_id) + " appears twice");
  }
  return out;
}

void for_each_json_line(const std::string& path,
                        const std::function<void(const json&, const std::string&, int64_t)>& fn) {
  std::ifstream in(path);
  if (!in) throw DataError(path + ": cannot open");
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    const std::string where = path + ": line " + std::to_string(n);
    json e;
    try {
      e = parse_json_text(line);
    } catch (const json::exception& err) {
      throw DataError(where + ": not valid JSON: " + err.what());
    }
    if (!e.is_object()) throw DataError(where + ": expected a JSON object");
    fn(e, where, n);
  }
}

std::vector<VqaQuestion> read_llava_questions(const std::string& path) {
  std::vector<VqaQuestion> out;
  for_each_json_line(path, [&](const json& e, const std::string& where, int64_t) {
    VqaQuestion q;
    q.question_id = get<int64_t>(e, "question_id", where);
    q.text = get<std::string>(e, "text", where);
    q.image = e.value("image", "");
    q.category = e.value("category", "");
    out.push_back(std::move(q));
  });
  return out;
}

std::string image_name_from_pattern(const std::string& pattern, int64_t image_id) {
  auto fail = [&](const std::string& why) -> std::invalid_argument {
    return std::invalid_argument("image pattern '" + pattern.substr(0, 200) + "': " + why +
                                 " (one integer conversion such as %012lld; %% for a literal %)");
  };
  std::string out;
  bool converted = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%') {
      out += pattern[i];
      continue;
    }
    if (i + 1 < pattern.size() && pattern[i + 1] == '%') {
      out += '%';
      ++i;
      continue;
    }
    if (converted) throw fail("more than one conversion");
    size_t j = i + 1;
    const bool zero = j < pattern.size() && pattern[j] == '0';
    if (zero) ++j;
    int64_t width = 0;
    for (; j < pattern.size() && std::isdigit(static_cast<unsigned char>(pattern[j])); ++j) {
      width = width * 10 + (pattern[j] - '0');
      if (width > 64) throw fail("a field width over 64");
    }
    const size_t first_l = j;
    while (j < pattern.size() && pattern[j] == 'l') ++j;
    if (j >= pattern.size() || (pattern[j] != 'd' && pattern[j] != 'i' && pattern[j] != 'u'))
      throw fail("'" + pattern.substr(i, std::min<size_t>(j + 1, pattern.size()) - i) + "' is not an integer conversion");
    if (j - first_l > 2) throw fail("too many 'l' length modifiers");
    if (pattern[j] == 'u' && image_id < 0) throw fail("a negative image id " + std::to_string(image_id) + " for %u");
    // the magnitude in unsigned arithmetic: -INT64_MIN does not fit an int64_t
    std::string digits = std::to_string(image_id < 0 ? 0 - uint64_t(image_id) : uint64_t(image_id));
    std::string sign = image_id < 0 ? "-" : "";
    const int64_t len = int64_t(sign.size() + digits.size());
    if (len < width) {
      if (zero) digits.insert(0, size_t(width - len), '0');
      else sign.insert(0, size_t(width - len), ' ');
    }
    out += sign + digits;
    converted = true;
    i = j;
  }
  if (!converted) throw fail("no conversion for the image id");
  return out;
}

}  // namespace mole
