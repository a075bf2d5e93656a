// Layout written under out_dir:
//   images/train/NNNNNN.png, images/eval/NNNNNN.png
//   captions.json        stage-1 alignment records (plain template): "<image>" -> caption
//   instruct.json        stage-2 records: short-answer VQA, detailed descriptions, yes/no, multiple choice
//                        (some two-turn), and text-only tasks (no image); each with its task family as
//                        "category" ("two_turn" for the two-turn ones)
//   eval/vqav2_questions.json, eval/vqav2_annotations.json   held-out questions in the official VQAv2 format,
//                        10 answers each with the variants a person would write ("2"/"two", "a circle")
//   eval/llava_questions.jsonl   the same questions as LLaVA's eval question file (with the short-answer suffix)
//   eval/text_questions.jsonl, eval/text_annotations.json   the text-only held-out set
//   corpus.txt           every caption, question and answer, for the tokenizer and the base language model
//   dataset_info.json    counts, seed, options
// Randomness comes from one splitmix64 stream (not std:: distributions, whose output differs between standard
// libraries), so a seed gives the same bytes everywhere OpenCV's PNG encoder does.
#include "data/shapes.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace mole {

using json = nlohmann::json;

namespace {

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 0x1234567ull) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
  bool chance(double p) { return static_cast<double>(next() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[static_cast<size_t>(below(static_cast<int64_t>(v.size())))]; }
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[static_cast<size_t>(below(static_cast<int64_t>(i)))]);
  }

 private:
  uint64_t state_;
};

struct Colour {
  std::string name;
  cv::Scalar bgr;
};
const std::vector<Colour> kColours = {{"red", {40, 40, 220}},     {"green", {60, 170, 40}},  {"blue", {220, 80, 40}},
                                      {"yellow", {40, 215, 240}}, {"purple", {180, 60, 140}}, {"orange", {30, 140, 250}},
                                      {"white", {245, 245, 245}}, {"black", {25, 25, 25}}};
const std::vector<std::string> kKinds = {"circle", "square", "triangle", "star"};
const std::vector<std::string> kWords = {"cat", "dog", "sun", "box", "car", "hat", "pen", "cup", "map", "bus"};
const std::array<const char*, 9> kCells = {"top left", "top", "top right", "left", "center",
                                           "right", "bottom left", "bottom", "bottom right"};
const char* kNumberWords[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"};
const std::string kShortSuffix = "\nAnswer the question using a single word or phrase.";
const std::string kMcSuffix = "\nAnswer with the option's letter from the given choices directly.";

struct Shape {
  std::string kind, colour;
  bool large = false;
  int cell = 0;
};

struct Scene {
  std::vector<Shape> shapes;
  std::string text;  // a word or a number drawn in the bottom row, or ""
  bool text_is_number = false;
};

Scene random_scene(Rng& rng) {
  Scene s;
  if (rng.chance(0.3)) {
    s.text_is_number = rng.chance(0.5);
    s.text = s.text_is_number ? std::to_string(rng.below(100)) : rng.pick(kWords);
  }
  std::vector<int> cells = s.text.empty() ? std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8} : std::vector<int>{0, 1, 2, 3, 4, 5};
  rng.shuffle(cells);
  int64_t n = 1 + rng.below(s.text.empty() ? 6 : 5);
  for (int64_t i = 0; i < n; ++i)
    s.shapes.push_back({rng.pick(kKinds), rng.pick(kColours).name, rng.chance(0.5), cells[static_cast<size_t>(i)]});
  return s;
}

cv::Scalar colour_of(const std::string& name) {
  for (const auto& c : kColours)
    if (c.name == name) return c.bgr;
  throw std::logic_error("unknown colour " + name);
}

cv::Mat draw(const Scene& s, int size) {
  cv::Mat img(size, size, CV_8UC3, cv::Scalar(128, 128, 128));
  double cell = size / 3.0;
  for (const auto& sh : s.shapes) {
    cv::Point2d c((sh.cell % 3 + 0.5) * cell, (sh.cell / 3 + 0.5) * cell);
    double r = cell * (sh.large ? 0.42 : 0.25);
    auto colour = colour_of(sh.colour);
    auto poly = [&](int n, double start, bool star) {
      std::vector<cv::Point> pts;
      int m = star ? 2 * n : n;
      for (int i = 0; i < m; ++i) {
        double a = start + 2 * CV_PI * i / m, rr = star && i % 2 ? r * 0.45 : r;
        pts.emplace_back(cvRound(c.x + rr * std::cos(a)), cvRound(c.y + rr * std::sin(a)));
      }
      cv::fillPoly(img, std::vector<std::vector<cv::Point>>{pts}, colour, cv::LINE_AA);
    };
    if (sh.kind == "circle") cv::circle(img, c, cvRound(r), colour, cv::FILLED, cv::LINE_AA);
    else if (sh.kind == "square") poly(4, CV_PI / 4, false);
    else if (sh.kind == "triangle") poly(3, -CV_PI / 2, false);
    else poly(5, -CV_PI / 2, true);
  }
  if (!s.text.empty()) {
    double scale = size / 128.0;
    int base = 0;
    auto box = cv::getTextSize(s.text, cv::FONT_HERSHEY_SIMPLEX, scale, 1, &base);
    cv::Point at((size - box.width) / 2, static_cast<int>(size * 5.0 / 6.0 + box.height / 2.0));
    cv::putText(img, s.text, at, cv::FONT_HERSHEY_SIMPLEX, scale, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  }
  return img;
}

std::string describe_shape(const Shape& sh) {
  return std::string(sh.large ? "a large " : "a small ") + sh.colour + " " + sh.kind + " at the " + kCells[sh.cell];
}

std::string article(const std::string& word) {
  return std::string("aeiou").find(word[0]) != std::string::npos ? "an" : "a";
}

std::string plural(const std::string& kind, int64_t n) { return n == 1 ? kind : kind + "s"; }

std::string caption(const Scene& s) {
  std::string out;
  for (size_t i = 0; i < s.shapes.size(); ++i)
    out += (i == 0 ? "" : i + 1 == s.shapes.size() ? " and " : ", ") + describe_shape(s.shapes[i]);
  out[0] = static_cast<char>(std::toupper(out[0]));
  if (!s.text.empty()) out += ", with the " + std::string(s.text_is_number ? "number " : "word ") + s.text + " written below";
  return out + ".";
}

std::string detailed(const Scene& s) {
  std::string out = "The image shows " + std::to_string(s.shapes.size()) + " " +
                    plural("shape", static_cast<int64_t>(s.shapes.size())) + " on a gray background. ";
  for (const auto& sh : s.shapes) out += "There is " + describe_shape(sh) + ". ";
  if (!s.text.empty())
    out += std::string("Below them, the ") + (s.text_is_number ? "number " : "word ") + s.text + " is written in white. ";
  return out.substr(0, out.size() - 1);
}

struct Qa {
  std::string family;         // vqa_colour, vqa_shape, vqa_count, vqa_position, vqa_text, yesno, mc, describe, text_*
  std::string question;       // without suffix
  std::string answer;         // canonical
  std::string answer_type;    // yes/no, number, other
  std::string question_type;  // first words, as VQAv2's question_type
  std::string suffix;         // appended for the model
  std::vector<std::string> choices = {};  // mc: the options in order (the answer is the letter of one)
  int answer_index = -1;                  // mc: the index of the right option
};

template <typename F>
std::vector<const Shape*> where(const Scene& s, F pred) {
  std::vector<const Shape*> out;
  for (const auto& sh : s.shapes)
    if (pred(sh)) out.push_back(&sh);
  return out;
}

// One short-answer question about the scene, of a random kind that the scene can answer unambiguously.
Qa short_question(const Scene& s, Rng& rng) {
  for (;;) {
    int64_t kind = rng.below(s.text.empty() ? 4 : 5);
    const Shape& sh = s.shapes[static_cast<size_t>(rng.below(static_cast<int64_t>(s.shapes.size())))];
    if (kind == 0 && where(s, [&](const Shape& o) { return o.kind == sh.kind; }).size() == 1)
      return {"vqa_colour", "What color is the " + sh.kind + "?", sh.colour, "other", "what color is the", kShortSuffix};
    if (kind == 1 && where(s, [&](const Shape& o) { return o.colour == sh.colour; }).size() == 1)
      return {"vqa_shape", "What shape is the " + sh.colour + " object?", sh.kind, "other", "what shape is the", kShortSuffix};
    if (kind == 2) {
      if (rng.chance(0.5))
        return {"vqa_count", "How many shapes are there?", std::to_string(s.shapes.size()), "number", "how many", kShortSuffix};
      auto n = where(s, [&](const Shape& o) { return o.kind == sh.kind; }).size();
      return {"vqa_count", "How many " + sh.kind + "s are there?", std::to_string(n), "number", "how many", kShortSuffix};
    }
    if (kind == 3 && where(s, [&](const Shape& o) { return o.kind == sh.kind && o.colour == sh.colour; }).size() == 1)
      return {"vqa_position", "Where is the " + sh.colour + " " + sh.kind + "?", kCells[sh.cell], "other", "where is the",
              kShortSuffix};
    if (kind == 4)
      return {"vqa_text", std::string("What ") + (s.text_is_number ? "number" : "word") + " is written in the image?",
              s.text, s.text_is_number ? "number" : "other", "what is written", kShortSuffix};
  }
}

Qa yesno_question(const Scene& s, Rng& rng) {
  bool truth = rng.chance(0.5);
  Shape probe;
  if (truth) {
    probe = s.shapes[static_cast<size_t>(rng.below(static_cast<int64_t>(s.shapes.size())))];
  } else {
    do {
      probe.kind = rng.pick(kKinds);
      probe.colour = rng.pick(kColours).name;
    } while (!where(s, [&](const Shape& o) { return o.kind == probe.kind && o.colour == probe.colour; }).empty());
  }
  return {"yesno", "Is there " + article(probe.colour) + " " + probe.colour + " " + probe.kind + " in the image?", truth ? "Yes" : "No", "yes/no",
          "is there a", kShortSuffix};
}

Qa mc_question(const Scene& s, Rng& rng) {
  auto unique_colour = where(s, [&](const Shape& sh) {
    return where(s, [&](const Shape& o) { return o.colour == sh.colour; }).size() == 1;
  });
  std::vector<std::string> options;
  std::string q, answer;
  if (!unique_colour.empty()) {  // which shape has this colour
    const Shape& sh = *unique_colour[static_cast<size_t>(rng.below(static_cast<int64_t>(unique_colour.size())))];
    options = kKinds;
    q = "Which shape is " + sh.colour + "?";
    answer = sh.kind;
  } else {  // every colour repeats: ask for the count instead
    int64_t n = static_cast<int64_t>(s.shapes.size());
    options = {std::to_string(n)};
    for (int64_t d = 1; options.size() < 4; ++d) {  // the nearest other counts, both sides
      if (n - d >= 1) options.push_back(std::to_string(n - d));
      if (options.size() < 4) options.push_back(std::to_string(n + d));
    }
    q = "How many shapes are there?";
    answer = std::to_string(n);
  }
  rng.shuffle(options);
  std::string letter;
  for (size_t i = 0; i < options.size(); ++i) {
    std::string l(1, static_cast<char>('A' + i));
    q += "\n" + l + ". " + options[i];
    if (options[i] == answer) letter = l;
  }
  const int index = letter.empty() ? -1 : letter[0] - 'A';
  return {"mc", q, letter, "other", "which option", kMcSuffix, options, index};
}

Qa text_task(Rng& rng) {
  int64_t kind = rng.below(4);
  if (kind == 0) {
    int64_t a = rng.below(50), b = rng.below(50);
    return {"text_arithmetic", "What is " + std::to_string(a) + " plus " + std::to_string(b) + "?",
            std::to_string(a + b), "number", "what is", kShortSuffix};
  }
  if (kind == 1) {
    int64_t a = 10 + rng.below(90), b = rng.below(10);
    return {"text_arithmetic", "What is " + std::to_string(a) + " minus " + std::to_string(b) + "?",
            std::to_string(a - b), "number", "what is", kShortSuffix};
  }
  std::string w = rng.pick(kWords);
  if (kind == 2) {
    std::string r(w.rbegin(), w.rend());
    return {"text_word", "Write the word " + w + " backwards.", r, "other", "write the word", kShortSuffix};
  }
  std::string next = std::to_string(rng.below(99));
  return {"text_word", "What number comes after " + next + "?", std::to_string(std::stoi(next) + 1), "number",
          "what number comes", kShortSuffix};
}

// Ten answers as annotators would give them: mostly the canonical form, some variants that the official
// normalisation maps back ("two" -> "2", "a circle" -> "circle", "top-left" -> "top left", "Yes" -> "yes").
json ten_answers(const Qa& qa, Rng& rng) {
  std::vector<std::string> variants = {qa.answer};
  const std::string& a = qa.answer;
  if (qa.answer_type == "number" && a.size() <= 2 && std::stoi(a) <= 10) variants.push_back(kNumberWords[std::stoi(a)]);
  if (qa.family == "vqa_shape") variants.push_back("a " + a);
  if (qa.family == "vqa_position" && a.find(' ') != std::string::npos) {
    std::string dashed = a;
    std::replace(dashed.begin(), dashed.end(), ' ', '-');
    variants.push_back(dashed);
  }
  if (qa.family == "yesno") variants.push_back(a == "Yes" ? "yes" : "no");
  if (qa.family == "vqa_colour") variants.push_back(a + ".");
  json answers = json::array();
  for (int i = 0; i < 10; ++i) {
    std::string ans = (variants.size() > 1 && rng.chance(0.3)) ? variants[1 + rng.below(static_cast<int64_t>(variants.size()) - 1)] : a;
    if (qa.family == "yesno") ans = ans == "Yes" ? "yes" : ans == "No" ? "no" : ans;
    answers.push_back({{"answer", ans}, {"answer_confidence", "yes"}, {"answer_id", i + 1}});
  }
  return answers;
}

json turn(const std::string& from, const std::string& value) { return {{"from", from}, {"value", value}}; }

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error(path.string() + ": cannot write");
}

std::string image_name(int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%06lld.png", static_cast<long long>(i));
  return buf;
}

}  // namespace

json make_shapes_dataset(const ShapesOptions& o) {
  namespace fs = std::filesystem;
  if (o.out_dir.empty()) throw std::invalid_argument("make-data shapes: --out is required");
  if (o.size < 24) throw std::invalid_argument("make-data shapes: --size must be >= 24 pixels");
  fs::path root(o.out_dir);
  for (const char* sub : {"images/train", "images/eval", "eval"}) fs::create_directories(root / sub);
  Rng rng(o.seed);
  std::map<std::string, int64_t> families;
  std::string corpus;
  const std::vector<int> png = {cv::IMWRITE_PNG_COMPRESSION, 6};

  json captions = json::array(), instruct = json::array();
  for (int64_t i = 0; i < o.n_train; ++i) {
    Scene s = random_scene(rng);
    std::string rel = "images/train/" + image_name(i);
    cv::imwrite((root / rel).string(), draw(s, static_cast<int>(o.size)), png);
    std::string cap = caption(s);
    captions.push_back({{"id", "cap-" + std::to_string(i)}, {"image", rel},
                        {"conversations", {turn("human", "<image>"), turn("gpt", cap)}}});
    corpus += cap + "\n";
    // Two instructions per image: a short-answer question, and one of describe / yes-no / multiple choice;
    // a third of the time asked as one two-turn conversation.
    Qa first = short_question(s, rng);
    int64_t other = rng.below(3);
    Qa second = other == 0 ? Qa{"describe", "Describe the image in detail.", detailed(s), "", "", ""}
                           : other == 1 ? yesno_question(s, rng) : mc_question(s, rng);
    auto record = [&](const std::string& id, std::vector<const Qa*> qas) {
      json conv = json::array();
      for (size_t k = 0; k < qas.size(); ++k) {
        conv.push_back(turn("human", (k == 0 ? "<image>\n" : "") + qas[k]->question + qas[k]->suffix));
        conv.push_back(turn("gpt", qas[k]->answer));
        families[qas[k]->family] += 1;
        corpus += qas[k]->question + " " + qas[k]->answer + "\n";
      }
      // the task family, for routing by family in training: a two-turn record's turns are of two families
      const std::string category = qas.size() == 1 ? qas[0]->family : "two_turn";
      instruct.push_back({{"id", id}, {"image", rel}, {"conversations", conv}, {"category", category}});
    };
    if (rng.chance(1.0 / 3)) {
      record("ins-" + std::to_string(i), {&first, &second});
    } else {
      record("ins-" + std::to_string(i) + "a", {&first});
      record("ins-" + std::to_string(i) + "b", {&second});
    }
  }
  for (int64_t i = 0; i < o.n_text_train; ++i) {
    Qa qa = text_task(rng);
    instruct.push_back({{"id", "txt-" + std::to_string(i)},
                        {"conversations", {turn("human", qa.question + qa.suffix), turn("gpt", qa.answer)}},
                        {"category", qa.family}});
    families[qa.family] += 1;
    corpus += qa.question + " " + qa.answer + "\n";
  }

  // Held-out evaluation in the official formats.
  json questions = json::array(), annotations = json::array();
  std::string llava_questions;
  int64_t qid = 0;
  std::map<std::string, int64_t> eval_families;
  json mc_problems = json::object();  // ScienceQA's problems.json layout
  std::string mc_questions;
  for (int64_t i = 0; i < o.n_eval; ++i) {
    Scene s = random_scene(rng);
    std::string rel = image_name(i);
    cv::imwrite((root / "images/eval" / rel).string(), draw(s, static_cast<int>(o.size)), png);
    for (const Qa& qa : {short_question(s, rng), short_question(s, rng), yesno_question(s, rng), mc_question(s, rng)}) {
      int64_t id = ++qid;
      if (qa.family == "mc") {  // scored by its letter, as ScienceQA / MMBench are: a set of its own
        mc_problems[std::to_string(id)] = {{"question", qa.question}, {"choices", qa.choices},
                                           {"answer", qa.answer_index}, {"split", "test"}, {"image", rel}};
        mc_questions += json({{"question_id", id}, {"image", rel}, {"text", qa.question + qa.suffix},
                              {"category", qa.family}}).dump() + "\n";
        eval_families[qa.family] += 1;
        continue;
      }
      questions.push_back({{"question_id", id}, {"image_id", i}, {"question", qa.question}});
      annotations.push_back({{"question_id", id}, {"image_id", i}, {"question_type", qa.question_type},
                             {"answer_type", qa.answer_type}, {"multiple_choice_answer", qa.family == "yesno" ? (qa.answer == "Yes" ? "yes" : "no") : qa.answer},
                             {"answers", ten_answers(qa, rng)}, {"family", qa.family}});
      llava_questions += json({{"question_id", id}, {"image", rel}, {"text", qa.question + qa.suffix},
                               {"category", qa.family}}).dump() + "\n";
      eval_families[qa.family] += 1;
    }
  }
  json text_annotations = json::array();
  std::string text_questions;
  for (int64_t i = 0; i < o.n_text_eval; ++i) {
    Qa qa = text_task(rng);
    int64_t id = 1000000 + i;
    text_questions += json({{"question_id", id}, {"text", qa.question + qa.suffix}, {"category", qa.family}}).dump() + "\n";
    text_annotations.push_back({{"question_id", id}, {"image_id", -1}, {"question_type", qa.question_type},
                                {"answer_type", qa.answer_type}, {"multiple_choice_answer", qa.answer},
                                {"answers", ten_answers(qa, rng)}, {"family", qa.family}});
    eval_families[qa.family] += 1;
  }

  json header = {{"info", {{"description", "mole synthetic shapes"}, {"seed", o.seed}}},
                 {"task_type", "Open-Ended"}, {"data_type", "shapes"}, {"data_subtype", "eval"}, {"license", json::object()}};
  json vqa_questions = header;
  vqa_questions["questions"] = questions;
  json vqa_annotations = header;
  vqa_annotations["annotations"] = annotations;
  json text_ann = header;
  text_ann["annotations"] = text_annotations;
  write_text(root / "captions.json", captions.dump(1) + "\n");
  write_text(root / "instruct.json", instruct.dump(1) + "\n");
  write_text(root / "eval/vqav2_questions.json", vqa_questions.dump(1) + "\n");
  write_text(root / "eval/vqav2_annotations.json", vqa_annotations.dump(1) + "\n");
  write_text(root / "eval/llava_questions.jsonl", llava_questions);
  write_text(root / "eval/mc_questions.jsonl", mc_questions);
  write_text(root / "eval/mc_problems.json", mc_problems.dump(1) + "\n");
  write_text(root / "eval/text_questions.jsonl", text_questions);
  write_text(root / "eval/text_annotations.json", text_ann.dump(1) + "\n");
  write_text(root / "corpus.txt", corpus);

  json info = {{"seed", o.seed}, {"size", o.size}, {"train_images", o.n_train}, {"eval_images", o.n_eval},
               {"captions", captions.size()}, {"instruct_records", instruct.size()},
               {"instruct_families", families}, {"eval_questions", questions.size()}, {"mc_eval_questions", mc_problems.size()},
               {"eval_families", eval_families}, {"text_eval_questions", o.n_text_eval},
               {"corpus_bytes", corpus.size()}};
  write_text(root / "dataset_info.json", info.dump(1) + "\n");
  return info;
}

}  // namespace mole
