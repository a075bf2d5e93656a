// The official VQA-style metrics. Reference files and functions: see vqa_metrics.h; each step below echoes the
// Python line it mirrors.
#include "eval/vqa_metrics.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "data/llava_data.h"  // DataError
#include "eval/py_text.h"

namespace mole {

using json = nlohmann::json;

namespace {

// vqaEval.py self.punct, in its order (the order matters: each mark is deleted or spaced in turn).
const char* const kPunct[] = {";", "/", "[", "]", "\"", "{", "}", "(", ")", "=", "+",
                              "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"};

const std::unordered_map<std::string, std::string>& manual_map() {
  static const std::unordered_map<std::string, std::string> m = {
      {"none", "0"}, {"zero", "0"}, {"one", "1"}, {"two", "2"}, {"three", "3"}, {"four", "4"},
      {"five", "5"}, {"six", "6"},  {"seven", "7"}, {"eight", "8"}, {"nine", "9"}, {"ten", "10"}};
  return m;
}

// vqaEval.py self.contractions, all 120 entries as written there: keys with capitals ("Id've", "Im", ...)
// can never match (lookup follows lower()), and "somebody'd" -> "somebodyd" runs backwards; both kept.
const std::unordered_map<std::string, std::string>& contractions() {
  static const std::unordered_map<std::string, std::string> m = {
      {"aint", "ain't"}, {"arent", "aren't"}, {"cant", "can't"}, {"couldve", "could've"},
      {"couldnt", "couldn't"}, {"couldn'tve", "couldn't've"}, {"couldnt've", "couldn't've"},
      {"didnt", "didn't"}, {"doesnt", "doesn't"}, {"dont", "don't"}, {"hadnt", "hadn't"},
      {"hadnt've", "hadn't've"}, {"hadn'tve", "hadn't've"}, {"hasnt", "hasn't"}, {"havent", "haven't"},
      {"hed", "he'd"}, {"hed've", "he'd've"}, {"he'dve", "he'd've"}, {"hes", "he's"}, {"howd", "how'd"},
      {"howll", "how'll"}, {"hows", "how's"}, {"Id've", "I'd've"}, {"I'dve", "I'd've"}, {"Im", "I'm"},
      {"Ive", "I've"}, {"isnt", "isn't"}, {"itd", "it'd"}, {"itd've", "it'd've"}, {"it'dve", "it'd've"},
      {"itll", "it'll"}, {"let's", "let's"}, {"maam", "ma'am"}, {"mightnt", "mightn't"},
      {"mightnt've", "mightn't've"}, {"mightn'tve", "mightn't've"}, {"mightve", "might've"},
      {"mustnt", "mustn't"}, {"mustve", "must've"}, {"neednt", "needn't"}, {"notve", "not've"},
      {"oclock", "o'clock"}, {"oughtnt", "oughtn't"}, {"ow's'at", "'ow's'at"}, {"'ows'at", "'ow's'at"},
      {"'ow'sat", "'ow's'at"}, {"shant", "shan't"}, {"shed've", "she'd've"}, {"she'dve", "she'd've"},
      {"she's", "she's"}, {"shouldve", "should've"}, {"shouldnt", "shouldn't"},
      {"shouldnt've", "shouldn't've"}, {"shouldn'tve", "shouldn't've"}, {"somebody'd", "somebodyd"},
      {"somebodyd've", "somebody'd've"}, {"somebody'dve", "somebody'd've"}, {"somebodyll", "somebody'll"},
      {"somebodys", "somebody's"}, {"someoned", "someone'd"}, {"someoned've", "someone'd've"},
      {"someone'dve", "someone'd've"}, {"someonell", "someone'll"}, {"someones", "someone's"},
      {"somethingd", "something'd"}, {"somethingd've", "something'd've"},
      {"something'dve", "something'd've"}, {"somethingll", "something'll"}, {"thats", "that's"},
      {"thered", "there'd"}, {"thered've", "there'd've"}, {"there'dve", "there'd've"},
      {"therere", "there're"}, {"theres", "there's"}, {"theyd", "they'd"}, {"theyd've", "they'd've"},
      {"they'dve", "they'd've"}, {"theyll", "they'll"}, {"theyre", "they're"}, {"theyve", "they've"},
      {"twas", "'twas"}, {"wasnt", "wasn't"}, {"wed've", "we'd've"}, {"we'dve", "we'd've"},
      {"weve", "we've"}, {"werent", "weren't"}, {"whatll", "what'll"}, {"whatre", "what're"},
      {"whats", "what's"}, {"whatve", "what've"}, {"whens", "when's"}, {"whered", "where'd"},
      {"wheres", "where's"}, {"whereve", "where've"}, {"whod", "who'd"}, {"whod've", "who'd've"},
      {"who'dve", "who'd've"}, {"wholl", "who'll"}, {"whos", "who's"}, {"whove", "who've"},
      {"whyll", "why'll"}, {"whyre", "why're"}, {"whys", "why's"}, {"wont", "won't"},
      {"wouldve", "would've"}, {"wouldnt", "wouldn't"}, {"wouldnt've", "wouldn't've"},
      {"wouldn'tve", "wouldn't've"}, {"yall", "y'all"}, {"yall'll", "y'all'll"}, {"y'allll", "y'all'll"},
      {"yall'd've", "y'all'd've"}, {"y'alld've", "y'all'd've"}, {"y'all'dve", "y'all'd've"},
      {"youd", "you'd"}, {"youd've", "you'd've"}, {"you'dve", "you'd've"}, {"youll", "you'll"},
      {"youre", "you're"}, {"youve", "you've"}};
  return m;
}

// re.search(r"(\d)(\,)(\d)", text): a decimal digit, a comma, a decimal digit (Unicode \d).
bool has_digit_comma_digit(const std::string& text) {
  for (size_t comma = text.find(','); comma != std::string::npos; comma = text.find(',', comma + 1)) {
    if (comma == 0 || comma + 1 >= text.size()) continue;
    size_t after = comma + 1;
    if (!py_isdecimal(utf8_next(text, &after))) continue;
    // the code point before the comma: step back over UTF-8 continuation bytes
    size_t before = comma - 1;
    while (before > 0 && (static_cast<unsigned char>(text[before]) & 0xC0) == 0x80) --before;
    size_t at = before;
    if (py_isdecimal(utf8_next(text, &at)) && at == comma) return true;
  }
  return false;
}

// periodStrip.sub("", text, 32): the pattern (?!<=\d)(\.)(?!\d) matches every '.' not followed by a decimal
// digit (its first lookahead tests for the text "<=" + digit, which a '.' never is), and the third
// argument, meant as flags, is the count: at most 32 deletions, found in one left-to-right scan.
std::string strip_periods(const std::string& text) {
  std::string out;
  int removed = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '.' && removed < 32) {
      size_t next = i + 1;
      if (next >= text.size() || !py_isdecimal(utf8_next(text, &next))) {
        ++removed;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

std::string join_ids(const std::vector<int64_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size() && i < 5; ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
  return out + (ids.size() > 5 ? ", ..." : "");
}

}  // namespace

std::string vqa_process_punctuation(const std::string& text) {
  std::string out = text;
  const bool digit_comma_digit = has_digit_comma_digit(text);  // tested on the input, as in the original
  for (const char* p : kPunct) {
    const std::string mark = p;
    // if (p + ' ' in inText or ' ' + p in inText) or (re.search(self.commaStrip, inText) != None)
    if (text.find(mark + " ") != std::string::npos || text.find(" " + mark) != std::string::npos ||
        digit_comma_digit)
      out = py_replace(out, mark, "");
    else
      out = py_replace(out, mark, " ");
  }
  return strip_periods(out);
}

std::string vqa_process_digit_article(const std::string& text) {
  std::vector<std::string> words;
  for (std::string word : py_split(py_lower(text))) {  // tempText = inText.lower().split()
    auto number = manual_map().find(word);                // word = self.manualMap.setdefault(word, word)
    if (number != manual_map().end()) word = number->second;
    if (word == "a" || word == "an" || word == "the") continue;  // if word not in self.articles
    words.push_back(word);
  }
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    auto c = contractions().find(words[i]);
    out += (i ? " " : "") + (c == contractions().end() ? words[i] : c->second);
  }
  return out;
}

std::string vqa_clean_whitespace(const std::string& text) {
  return py_strip(py_replace(py_replace(text, "\n", " "), "\t", " "));
}

std::string eval_ai_answer_processor(const std::string& text) {
  // word_tokenize: word.lower(); .replace(",", "").replace("?", "").replace("'s", " 's"); .strip()
  std::string item = py_lower(text);
  item = py_replace(py_replace(py_replace(item, ",", ""), "?", ""), "'s", " 's");
  item = py_strip(item);
  item = vqa_clean_whitespace(item);  // item.replace("\n", " ").replace("\t", " ").strip()
  item = vqa_process_punctuation(item);
  return vqa_process_digit_article(item);
}

double vqa_question_accuracy(const std::vector<std::string>& gt_answers, const std::string& prediction) {
  if (gt_answers.empty()) throw DataError("a question without ground-truth answers");
  std::vector<std::string> gts;
  for (const auto& a : gt_answers) gts.push_back(vqa_clean_whitespace(a));
  std::string pred = vqa_clean_whitespace(prediction);
  // if len(set(gtAnswers)) > 1: normalise the answers and the prediction
  if (std::set<std::string>(gts.begin(), gts.end()).size() > 1) {
    for (auto& a : gts) a = vqa_process_digit_article(vqa_process_punctuation(a));
    pred = vqa_process_digit_article(vqa_process_punctuation(pred));
  }
  double sum = 0;  // sum(gtAcc), left to right
  for (size_t i = 0; i < gts.size(); ++i) {
    int matching = 0;  // otherGTAns = answers but this one; matchingAns = those equal to resAns
    for (size_t j = 0; j < gts.size(); ++j) matching += (j != i && gts[j] == pred);
    sum += std::min(1.0, static_cast<double>(matching) / 3);  // acc = min(1, float(len(matchingAns))/3)
  }
  return sum / static_cast<double>(gts.size());  // avgGTAcc = float(sum(gtAcc))/len(gtAcc)
}

double py_round(double x, int ndigits) {
  // printf rounds the exact binary value correctly (ties to even), as CPython's round does through dtoa;
  // reading the decimal back gives the nearest double, which is what round returns.
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%.*f", ndigits, x);
  return std::strtod(buf, nullptr);
}

json VqaScore::to_json() const {
  json per_q = json::object(), per_a = json::object(), eval_qa = json::object();
  for (const auto& [type, acc] : per_question_type) per_q[type] = py_round(acc, 2);
  for (const auto& [type, acc] : per_answer_type) per_a[type] = py_round(acc, 2);
  for (const auto& [id, acc] : per_question) eval_qa[std::to_string(id)] = py_round(100 * acc, 2);
  return {{"overall", py_round(overall, 2)}, {"perQuestionType", per_q}, {"perAnswerType", per_a},
          {"evalQA", eval_qa}};
}

VqaScore score_vqav2(const std::map<int64_t, VqaAnnotation>& annotations,
                     const std::map<int64_t, std::string>& answers, const std::vector<int64_t>& order) {
  if (annotations.empty()) throw DataError("VQAv2 scoring: no annotated questions");
  // VQA.loadRes asserts the results are for annotated questions; evaluate() then looks every annotated
  // question up in the results (a KeyError for a missing one).
  std::vector<int64_t> missing, extra;
  for (const auto& [id, ann] : annotations)
    if (!answers.count(id)) missing.push_back(id);
  for (const auto& [id, answer] : answers)
    if (!annotations.count(id)) extra.push_back(id);
  if (!missing.empty() || !extra.empty()) {
    std::string msg = "the results must answer exactly the annotated questions (as the official evaluator needs):";
    if (!missing.empty())
      msg += " " + std::to_string(missing.size()) + " annotated question(s) have no answer (" + join_ids(missing) + ")";
    if (!extra.empty())
      msg += std::string(missing.empty() ? "" : ";") + " " + std::to_string(extra.size()) +
             " answer(s) are for questions not annotated (" + join_ids(extra) + ")";
    throw DataError(msg);
  }
  std::vector<int64_t> ids = order;
  if (ids.empty()) {
    for (const auto& [id, ann] : annotations) ids.push_back(id);
  } else {
    std::unordered_set<int64_t> seen(ids.begin(), ids.end());
    bool same = seen.size() == ids.size() && ids.size() == annotations.size();
    for (int64_t id : ids) same = same && annotations.count(id);
    if (!same) throw DataError("VQAv2 scoring: `order` is not the annotated question ids, each once");
  }

  VqaScore score;
  double sum = 0;
  std::map<std::string, std::pair<double, int64_t>> q_sums, a_sums;  // type -> (sum of acc, count)
  for (int64_t id : ids) {                                            // for quesId in quesIds (file order)
    const VqaAnnotation& ann = annotations.at(id);
    if (ann.answers.empty())
      throw DataError("VQAv2 scoring: question " + std::to_string(id) + " has no ground-truth answers");
    double acc = vqa_question_accuracy(ann.answers, answers.at(id));
    score.per_question[id] = acc;
    sum += acc;
    auto& q = q_sums[ann.question_type];
    q.first += acc, q.second += 1;
    auto& a = a_sums[ann.answer_type];
    a.first += acc, a.second += 1;
  }
  // setAccuracy: round(100*float(sum(acc))/len(acc), n); the rounding is left to to_json().
  score.overall = 100 * sum / static_cast<double>(ids.size());
  for (const auto& [type, s] : q_sums) score.per_question_type[type] = 100 * s.first / static_cast<double>(s.second);
  for (const auto& [type, s] : a_sums) score.per_answer_type[type] = 100 * s.first / static_cast<double>(s.second);
  return score;
}

// ---- GQA ----

std::string gqa_prediction(const std::string& text) {
  size_t end = text.size();
  while (end > 0 && text[end - 1] == '.') --end;  // rstrip('.')
  return py_lower(text.substr(0, end));
}

json AccuracyScore::to_json() const { return {{"accuracy", accuracy}, {"correct", correct}, {"count", count}}; }

AccuracyScore score_gqa(const std::map<std::string, std::string>& gold,
                        const std::map<std::string, std::string>& predictions) {
  std::vector<std::string> missing;
  for (const auto& [id, answer] : gold)
    if (!predictions.count(id)) missing.push_back(id);
  if (!missing.empty()) {
    std::string msg = "GQA: " + std::to_string(missing.size()) + " question(s) have no prediction (";
    for (size_t i = 0; i < missing.size() && i < 5; ++i) msg += (i ? ", " : "") + missing[i];
    throw DataError(msg + (missing.size() > 5 ? ", ...)" : ")") + "; GQA's eval.py needs them all");
  }
  AccuracyScore score;
  for (const auto& [id, answer] : gold) {
    score.correct += predictions.at(id) == answer;  // correct = (predicted == gold)
    score.count += 1;
  }
  // avg(l) * 100 with avg(l) = float(sum(l)) / len(l), and 0 for an empty list
  if (score.count > 0)
    score.accuracy = static_cast<double>(score.correct) / static_cast<double>(score.count) * 100;
  return score;
}

// ---- ScienceQA ----

std::string scienceqa_parse(const std::string& output) {
  auto is_option = [](char c) { return c >= 'A' && c <= 'E'; };
  if (output.size() == 1 && is_option(output[0])) return output;  // pred_text in args.options
  // len(pred_text) >= 3 and pred_text[0] in args.options and pred_text[1:3] == ". "
  if (output.size() >= 3 && is_option(output[0]) && output.compare(1, 2, ". ") == 0) return output.substr(0, 1);
  // res = re.compile(r'The answer is ([A-Z]).').findall(pred_text); the answer only if len(res) == 1
  static const std::string kLead = "The answer is ";
  std::vector<char> found;
  for (size_t pos = 0; (pos = output.find(kLead, pos)) != std::string::npos;) {
    size_t letter = pos + kLead.size();
    size_t any = letter + 1;  // '.' : one code point, not '\n'
    if (letter < output.size() && output[letter] >= 'A' && output[letter] <= 'Z' && any < output.size() &&
        output[any] != '\n') {
      found.push_back(output[letter]);
      utf8_next(output, &any);
      pos = any;  // findall goes on after the whole match
    } else {
      pos += 1;
    }
  }
  return found.size() == 1 ? std::string(1, found[0]) : "FAILED";
}

std::string scienceqa_letter(const std::string& output, int n_options) {
  std::string parsed = scienceqa_parse(output);
  // get_pred_idx: prediction in options[:len(choices)], options = A..E
  if (parsed.size() == 1 && parsed[0] >= 'A' && parsed[0] <= 'E' && parsed[0] - 'A' < n_options) return parsed;
  return "FAILED";
}

json ScienceQaScore::to_json() const {
  return {{"acc", accuracy}, {"correct", correct},     {"count", count},
          {"img_acc", img_accuracy}, {"img_count", img_count}, {"results", pred_index}};
}

ScienceQaScore score_scienceqa(const std::map<std::string, ScienceQaProblem>& problems,
                               const std::map<std::string, ScienceQaPrediction>& predictions) {
  if (problems.empty()) throw DataError("ScienceQA: no problems to score");
  ScienceQaScore score;
  for (const auto& [id, problem] : problems) {
    auto it = predictions.find(id);
    // a missing prediction: pred_text = 'FAILED', prompt 'Unknown' (not multimodal)
    std::string letter = it == predictions.end() ? "FAILED" : scienceqa_letter(it->second.text, problem.n_choices);
    int index = letter == "FAILED" ? -1 : letter[0] - 'A';
    bool multimodal = it != predictions.end() && it->second.prompt.find("<image>") != std::string::npos;
    bool right = index == problem.answer;
    score.pred_index[id] = index;
    score.count += 1;
    score.correct += right;
    score.img_count += multimodal;
    score.img_correct += multimodal && right;
  }
  score.accuracy = static_cast<double>(score.correct) / static_cast<double>(score.count) * 100;
  if (score.img_count > 0)
    score.img_accuracy = static_cast<double>(score.img_correct) / static_cast<double>(score.img_count) * 100;
  return score;
}

// ---- POPE ----

std::string pope_parse(const std::string& text) {
  std::string first = text.substr(0, text.find('.'));  // if text.find('.') != -1: text.split('.')[0]
  first = py_replace(first, ",", "");
  // words = text.split(' '): single spaces, so empty words and words holding '\n' are kept as they are
  size_t start = 0;
  while (true) {
    size_t end = first.find(' ', start);
    std::string word = first.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (word == "No" || word == "not" || word == "no") return "no";
    if (end == std::string::npos) return "yes";
    start = end + 1;
  }
}

json PopeScore::to_json() const {
  return {{"accuracy", accuracy}, {"precision", precision}, {"recall", recall}, {"f1", f1},
          {"yes_ratio", yes_ratio}, {"tp", tp}, {"fp", fp}, {"tn", tn}, {"fn", fn}, {"n", n}};
}

PopeScore score_pope(const std::vector<std::string>& predictions, const std::vector<std::string>& labels) {
  if (predictions.size() != labels.size())
    throw DataError("POPE: " + std::to_string(predictions.size()) + " predictions for " +
                    std::to_string(labels.size()) + " labels (they are paired in order)");
  if (predictions.empty()) throw DataError("POPE: nothing to score");
  PopeScore s;
  int64_t yes = 0;
  for (size_t i = 0; i < predictions.size(); ++i) {
    bool pred = predictions[i] != "no", label = labels[i] != "no";
    yes += pred;
    s.tp += pred && label;
    s.fp += pred && !label;
    s.tn += !pred && !label;
    s.fn += !pred && label;
  }
  s.n = static_cast<int64_t>(predictions.size());
  auto ratio = [](double a, double b) { return b == 0 ? 0.0 : a / b; };
  s.yes_ratio = ratio(yes, s.n);  // pred_list.count(1) / len(pred_list)
  s.precision = ratio(s.tp, s.tp + s.fp);
  s.recall = ratio(s.tp, s.tp + s.fn);
  s.f1 = ratio(2 * s.precision * s.recall, s.precision + s.recall);
  s.accuracy = ratio(s.tp + s.tn, s.tp + s.tn + s.fp + s.fn);
  return s;
}

}  // namespace mole
