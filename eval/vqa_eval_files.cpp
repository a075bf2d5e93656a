// Readers for evaluation results and ground truth. References: see vqa_eval_files.h.
#include "eval/vqa_eval_files.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "core/json_config.h"
#include "data/llava_data.h"  // DataError

namespace mole {

using json = nlohmann::json;

namespace {

json parse_file(const std::string& path) {
  try {
    return read_json_file(path);
  } catch (const ConfigError& e) {
    throw DataError(e.what());
  }
}

// A question id as text: a JSON string as written, an integer as its digits. Returns false for other types.
bool id_text(const json& v, std::string* out, bool* is_integer) {
  if (v.is_string()) {
    *out = v.get<std::string>();
    *is_integer = false;
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.is_number_unsigned() ? std::to_string(v.get<uint64_t>()) : std::to_string(v.get<int64_t>());
    *is_integer = true;
    return true;
  }
  return false;
}

std::string required_id(const json& e, const char* key, const std::string& where) {
  std::string id;
  bool is_integer = false;
  if (!e.contains(key) || !id_text(e[key], &id, &is_integer))
    throw DataError(where + ": no \"" + key + "\" (an integer or a string)");
  return id;
}

int64_t to_int_id(const std::string& id, const std::string& where) {
  try {
    size_t used = 0;
    int64_t v = std::stoll(id, &used);
    if (used == id.size()) return v;
  } catch (const std::exception&) {
  }
  throw DataError(where + ": question_id '" + id + "' is not an integer");
}

}  // namespace

std::vector<LlavaAnswer> read_llava_answers(const std::string& path) {
  std::vector<LlavaAnswer> out;
  for_each_json_line(path, [&](const json& e, const std::string& where, int64_t n) {
    LlavaAnswer a;
    a.line = n;
    if (!e.contains("question_id") || !id_text(e["question_id"], &a.question_id, &a.id_is_integer))
      throw DataError(where + ": no \"question_id\" (an integer or a string)");
    if (!e.contains("text") || !e["text"].is_string()) throw DataError(where + ": no string \"text\"");
    a.text = e["text"].get<std::string>();
    if (e.contains("prompt") && e["prompt"].is_string()) a.prompt = e["prompt"].get<std::string>();
    out.push_back(std::move(a));
  });
  return out;
}

std::map<int64_t, std::string> llava_answers_for_vqav2(const std::vector<LlavaAnswer>& answers,
                                                       const std::string& path, const std::vector<int64_t>* split) {
  std::map<int64_t, std::string> by_id;  // results = {x['question_id']: x['text'] for x in results}
  for (const auto& a : answers) {
    std::string where = path + ": line " + std::to_string(a.line);
    if (!a.id_is_integer) throw DataError(where + ": a VQAv2 question_id must be an integer");
    by_id[to_int_id(a.question_id, where)] = a.text;
  }
  std::map<int64_t, std::string> out;
  if (!split) {
    for (const auto& [id, text] : by_id) out[id] = eval_ai_answer_processor(text);
    return out;
  }
  for (int64_t id : *split) {  // for x in test_split: '' when unanswered, else answer_processor(text)
    auto it = by_id.find(id);
    out[id] = it == by_id.end() ? "" : eval_ai_answer_processor(it->second);
  }
  return out;
}

std::map<int64_t, std::string> read_vqav2_results(const std::string& path) {
  json doc = parse_file(path);
  // assert type(anns) == list, 'results in not an array of objects'
  if (!doc.is_array()) throw DataError(path + ": expected a JSON list of {\"question_id\", \"answer\"}");
  std::map<int64_t, std::string> out;
  for (size_t i = 0; i < doc.size(); ++i) {
    std::string where = path + ": entry " + std::to_string(i);
    const json& e = doc[i];
    if (!e.is_object() || !e.contains("question_id") || !e["question_id"].is_number_integer())
      throw DataError(where + ": no integer \"question_id\"");
    if (!e.contains("answer") || !e["answer"].is_string()) throw DataError(where + ": no string \"answer\"");
    out[e["question_id"].get<int64_t>()] = e["answer"].get<std::string>();
  }
  return out;
}

std::vector<std::string> read_question_ids(const std::string& path) {
  std::vector<std::string> ids;
  json doc;
  bool whole = true;  // one JSON document (else JSON Lines)
  {
    std::string text;
    try {
      text = read_input_file(path, "VQA file");
    } catch (const std::runtime_error& e) {
      throw DataError(e.what());
    }
    try {
      doc = parse_json_text(text);
    } catch (const json::exception&) {
      whole = false;
    }
  }
  if (whole && doc.is_object() && doc.contains("questions") && doc["questions"].is_array()) {
    const json& list = doc["questions"];
    for (size_t i = 0; i < list.size(); ++i)
      ids.push_back(required_id(list[i], "question_id", path + ": questions[" + std::to_string(i) + "]"));
    return ids;
  }
  if (whole && doc.is_array()) {
    for (size_t i = 0; i < doc.size(); ++i) {
      std::string where = path + ": entry " + std::to_string(i);
      if (!doc[i].is_object()) throw DataError(where + ": expected a JSON object");
      ids.push_back(required_id(doc[i], doc[i].contains("question_id") ? "question_id" : "id", where));
    }
    return ids;
  }
  // JSON Lines (a one-line file parses whole as an object: read it the same way)
  for_each_json_line(path, [&](const json& e, const std::string& where, int64_t) {
    ids.push_back(required_id(e, "question_id", where));
  });
  return ids;
}

std::vector<int64_t> vqav2_annotation_order(const json& doc, const std::string& path) {
  if (!doc.is_object() || !doc.contains("annotations") || !doc["annotations"].is_array())
    throw DataError(path + ": expected a JSON object with an \"annotations\" list");
  std::vector<int64_t> ids;
  const json& list = doc["annotations"];
  for (size_t i = 0; i < list.size(); ++i) {
    const json& e = list[i];
    if (!e.is_object() || !e.contains("question_id") || !e["question_id"].is_number_integer())
      throw DataError(path + ": annotations[" + std::to_string(i) + "]: no integer \"question_id\"");
    ids.push_back(e["question_id"].get<int64_t>());
  }
  return ids;
}

std::map<std::string, std::string> llava_answers_for_gqa(const std::vector<LlavaAnswer>& answers) {
  std::map<std::string, std::string> out;
  for (const auto& a : answers) out[a.question_id] = gqa_prediction(a.text);  // text.rstrip('.').lower()
  return out;
}

std::map<std::string, std::string> read_gqa_gold(const std::string& path) {
  json doc = parse_file(path);
  if (!doc.is_object()) throw DataError(path + ": expected a JSON object {question id: question}");
  std::map<std::string, std::string> out;
  for (const auto& [id, q] : doc.items()) {
    std::string where = path + ": question " + id;
    if (!q.is_object() || !q.contains("answer") || !q["answer"].is_string())
      throw DataError(where + ": no string \"answer\"");
    if (!q.contains("isBalanced") || !q["isBalanced"].is_boolean())
      throw DataError(where + ": no boolean \"isBalanced\"");
    if (q["isBalanced"].get<bool>()) out[id] = q["answer"].get<std::string>();
  }
  return out;
}

std::map<std::string, ScienceQaProblem> read_scienceqa_problems(const std::string& path, const std::string& split,
                                                                const std::vector<std::string>& only) {
  json doc = parse_file(path);
  if (!doc.is_object()) throw DataError(path + ": expected a JSON object {problem id: problem}");
  std::map<std::string, ScienceQaProblem> out;
  for (const auto& [id, p] : doc.items()) {
    std::string where = path + ": problem " + id;
    if (!p.is_object() || !p.contains("choices") || !p["choices"].is_array())
      throw DataError(where + ": no \"choices\" list");
    if (!p.contains("answer") || !p["answer"].is_number_integer()) throw DataError(where + ": no integer \"answer\"");
    if (!split.empty() && !(p.contains("split") && p["split"].is_string() && p["split"].get<std::string>() == split))
      continue;
    out[id] = {p["answer"].get<int>(), static_cast<int>(p["choices"].size())};
  }
  if (!only.empty()) {
    std::map<std::string, ScienceQaProblem> kept;
    for (const auto& id : only) {
      auto it = out.find(id);
      if (it == out.end())
        throw DataError(path + ": problem " + id + " (from the question file) is not a problem of split '" + split + "'");
      kept[id] = it->second;
    }
    out.swap(kept);
  }
  return out;
}

std::map<std::string, ScienceQaPrediction> llava_answers_for_scienceqa(const std::vector<LlavaAnswer>& answers) {
  std::map<std::string, ScienceQaPrediction> out;
  for (const auto& a : answers) out[a.question_id] = {a.text, a.prompt};
  return out;
}

std::vector<std::string> read_pope_labels(const std::string& path) {
  std::vector<std::string> labels;
  for_each_json_line(path, [&](const json& e, const std::string& where, int64_t) {
    if (!e.contains("label") || !e["label"].is_string()) throw DataError(where + ": no string \"label\"");
    labels.push_back(e["label"].get<std::string>());
  });
  return labels;
}

std::map<std::string, PopeScore> score_pope_files(const std::vector<LlavaAnswer>& answers,
                                                  const std::string& questions_path,
                                                  const std::string& annotation_dir) {
  std::map<std::string, std::string> category;  // questions = {question['question_id']: question}
  for_each_json_line(questions_path, [&](const json& e, const std::string& where, int64_t) {
    if (!e.contains("category") || !e["category"].is_string()) throw DataError(where + ": no string \"category\"");
    category[required_id(e, "question_id", where)] = e["category"].get<std::string>();
  });
  // The label files: coco_pope_<category>.json in the folder (or the one file given).
  namespace fs = std::filesystem;
  std::map<std::string, std::string> label_files;  // category -> path, sorted (os.listdir has no order)
  auto add = [&](const fs::path& p) {
    std::string name = p.filename().string();
    if (name.rfind("coco_pope_", 0) == 0 && name.size() > 15 && name.compare(name.size() - 5, 5, ".json") == 0)
      label_files[name.substr(10, name.size() - 15)] = p.string();  // category = file[10:-5]
  };
  std::error_code ec;
  if (fs::is_directory(annotation_dir, ec)) {
    for (const auto& entry : fs::directory_iterator(annotation_dir, ec)) add(entry.path());
  } else {
    add(annotation_dir);
  }
  if (label_files.empty())
    throw DataError(annotation_dir + ": no POPE annotation file (coco_pope_<category>.json) there");

  for (const auto& a : answers)
    if (!category.count(a.question_id))
      throw DataError(questions_path + ": has no question " + a.question_id + " (answered on line " +
                      std::to_string(a.line) + ")");
  std::map<std::string, PopeScore> out;
  for (const auto& [cat, file] : label_files) {
    std::vector<std::string> predictions;  // cur_answers, in answer-file order
    for (const auto& a : answers)
      if (category[a.question_id] == cat) predictions.push_back(pope_parse(a.text));
    try {
      out[cat] = score_pope(predictions, read_pope_labels(file));
    } catch (const DataError& e) {
      throw DataError(file + " (category " + cat + "): " + e.what());
    }
  }
  return out;
}

}  // namespace mole
