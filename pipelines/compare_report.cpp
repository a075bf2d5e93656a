#include "pipelines/compare_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "core/json_config.h"
#include "data/llava_data.h"
#include "eval/vqa_data.h"
#include "eval/vqa_eval_files.h"
#include "eval/vqa_metrics.h"
#include "report/html.h"
#include "report/line_chart.h"

namespace mole {

using json = nlohmann::json;

json interval_json(const MeanInterval& m) {
  auto num = [](double v) { return std::isfinite(v) ? json(v) : json(); };
  return {{"mean", num(m.mean)}, {"lo", num(m.lo)}, {"hi", num(m.hi)}, {"sd", num(m.sd)}, {"n", m.n}};
}

namespace {

// The best constant option letter per family of a multiple-choice set.
json constant_letter_floor(const CompareEvalSet& set, const std::vector<VqaQuestion>& questions) {
  std::vector<std::string> ids;
  for (const VqaQuestion& q : questions) ids.push_back(std::to_string(q.question_id));
  const auto problems = read_scienceqa_problems(set.annotations, "test", ids);
  std::map<std::string, std::map<int, int64_t>> right;  // family -> answer index -> questions
  std::map<std::string, int64_t> count;
  for (const VqaQuestion& q : questions) {
    const std::string family = q.category.empty() ? "(none)" : q.category;
    right[family][problems.at(std::to_string(q.question_id)).answer] += 1;
    count[family] += 1;
  }
  json families = json::object(), answers = json::object();
  int64_t total = 0, n = 0;
  for (const auto& [family, by_index] : right) {
    auto best = std::max_element(by_index.begin(), by_index.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; });
    families[family] = 100.0 * double(best->second) / double(count[family]);
    answers[family] = std::string(1, char('A' + best->first));
    total += best->second, n += count[family];
  }
  std::map<int, int64_t> letters;  // the majority letter over the whole set
  for (const auto& [family, by_index] : right)
    for (const auto& [index, k] : by_index) letters[index] += k;
  json majority = {{"answer", ""}, {"overall", 0.0}};
  if (!letters.empty()) {
    auto most = std::max_element(letters.begin(), letters.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; });
    majority = {{"answer", std::string(1, char('A' + most->first))},
                {"overall", 100.0 * double(most->second) / double(n)}};
  }
  return {{"overall", n ? 100.0 * double(total) / double(n) : 0.0}, {"families", families}, {"answers", answers},
          {"majority", majority}};
}

}  // namespace

json constant_answer_floor(const CompareEvalSet& set) {
  auto questions = read_llava_questions(set.questions);
  if (set.limit > 0 && int64_t(questions.size()) > set.limit) questions.resize(size_t(set.limit));
  if (set.metric == EvalMetric::kScienceqa) return constant_letter_floor(set, questions);
  const auto annotations = read_vqav2_annotations(set.annotations);
  std::map<std::string, std::vector<const VqaAnnotation*>> by_family;
  for (const VqaQuestion& q : questions) {
    auto it = annotations.find(q.question_id);
    if (it == annotations.end())
      throw DataError(set.annotations + ": no annotation for question " + std::to_string(q.question_id) + " of " +
                      set.questions);
    by_family[q.category].push_back(&it->second);
  }
  json families = json::object(), answers = json::object();
  double total = 0;
  size_t n = 0;
  for (const auto& [family, anns] : by_family) {
    std::set<std::string> candidates;
    for (const VqaAnnotation* a : anns) candidates.insert(eval_ai_answer_processor(a->multiple_choice_answer));
    double best = -1;
    std::string best_answer;
    for (const std::string& c : candidates) {
      double sum = 0;
      for (const VqaAnnotation* a : anns) sum += vqa_question_accuracy(a->answers, c);
      if (sum > best) best = sum, best_answer = c;
    }
    families[family.empty() ? "(none)" : family] = 100.0 * best / double(anns.size());
    answers[family.empty() ? "(none)" : family] = best_answer;
    total += best, n += anns.size();
  }
  // the majority answer: the most frequent canonical answer of the whole set, given to every question
  std::map<std::string, int64_t> frequency;
  for (const auto& [family, anns] : by_family)
    for (const VqaAnnotation* a : anns) frequency[eval_ai_answer_processor(a->multiple_choice_answer)] += 1;
  json majority = {{"answer", ""}, {"overall", 0.0}};
  if (!frequency.empty()) {
    const std::string answer = std::max_element(frequency.begin(), frequency.end(), [](const auto& a, const auto& b) {
                                 return a.second < b.second;
                               })->first;
    double sum = 0;
    for (const auto& [family, anns] : by_family)
      for (const VqaAnnotation* a : anns) sum += vqa_question_accuracy(a->answers, answer);
    majority = {{"answer", answer}, {"overall", 100.0 * sum / double(n)}};
  }
  return {{"overall", n ? 100.0 * total / double(n) : 0.0}, {"families", families}, {"answers", answers},
          {"majority", majority}};
}

double steps_to_reach(const std::vector<double>& steps, const std::vector<double>& losses, double threshold) {
  for (size_t i = 0; i < steps.size() && i < losses.size(); ++i)
    if (std::isfinite(losses[i]) && losses[i] <= threshold) return steps[i];
  return NAN;
}

namespace {

double number(const json& j, const std::string& key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

std::vector<double> numbers(const json& list) {
  std::vector<double> v;
  for (const json& x : list) v.push_back(x.is_number() ? x.get<double>() : NAN);
  return v;
}

// The job result of each seed of a config, in the compare's seed order (null where missing).
std::vector<json> per_seed(const CompareConfig& c, const std::string& name, const std::vector<json>& jobs) {
  std::vector<json> out;
  for (int64_t seed : c.seeds) {
    json found;
    for (const json& j : jobs)
      if (j.value("name", "") == name && j.value("seed", int64_t(-1)) == seed) found = j;
    out.push_back(found);
  }
  return out;
}

std::vector<double> set_values(const std::vector<json>& runs, const std::string& set, const std::string& family) {
  std::vector<double> v;
  for (const json& r : runs) {
    const json* at = r.is_null() ? nullptr : &r["sets"][set];
    if (at && !family.empty()) at = (*at)["families"].contains(family) ? &(*at)["families"][family] : nullptr;
    else if (at) at = &(*at)["overall"];
    v.push_back(at && at->is_number() ? at->get<double>() : NAN);
  }
  return v;
}

std::vector<double> log_values(const std::vector<json>& runs, const std::string& key) {
  std::vector<double> v;
  for (const json& r : runs) v.push_back(r.is_null() ? NAN : number(r["log"], key));
  return v;
}

std::vector<double> top_values(const std::vector<json>& runs, const std::string& key) {
  std::vector<double> v;
  for (const json& r : runs) v.push_back(r.is_null() ? NAN : number(r, key));
  return v;
}

}  // namespace

json aggregate_compare(const CompareConfig& c, const std::vector<json>& jobs) {
  json out;
  out["seeds"] = c.seeds;
  out["baseline"] = c.baseline_run().name;
  std::vector<std::string> names, sets, text_sets;
  for (const CompareRun& r : c.runs) names.push_back(r.name);
  for (const CompareEvalSet& s : c.eval) {
    sets.push_back(s.name);
    if (s.text) text_sets.push_back(s.name);
  }
  out["configs"] = names;
  out["sets"] = sets;
  out["text_sets"] = text_sets;
  // families per set: every category any job reported
  json families = json::object();
  for (const std::string& set : sets) {
    std::set<std::string> f;
    for (const json& j : jobs)
      if (j.contains("sets") && j["sets"].contains(set))
        for (const auto& [family, acc] : j["sets"][set]["families"].items()) f.insert(family);
    families[set] = std::vector<std::string>(f.begin(), f.end());
  }
  out["families"] = families;
  json base;
  for (const json& j : jobs)
    if (j.value("job", "") == "base") base = j;
  out["base"] = base.is_null() ? json() : json{{"sets", base["sets"]}, {"model", base["model"]}};
  json floor = json::object();
  for (const CompareEvalSet& s : c.eval) floor[s.name] = constant_answer_floor(s);
  out["floor"] = floor;

  // the loss threshold: given, or the highest final loss of any run (every run reached it)
  double threshold = c.loss_threshold.value_or(-INFINITY);
  if (!c.loss_threshold)
    for (const json& j : jobs)
      if (j.contains("log")) threshold = std::max(threshold, number(j["log"], "final_loss"));
  out["loss_threshold"] = std::isfinite(threshold) ? json(threshold) : json();

  const std::vector<json> baseline_runs = per_seed(c, c.baseline_run().name, jobs);
  json stats = json::object();
  for (const std::string& name : names) {
    const std::vector<json> runs = per_seed(c, name, jobs);
    json s;
    for (const std::string& set : sets) {
      json fam = json::object(), paired_fam = json::object();
      for (const std::string f : families[set]) {
        fam[f] = interval_json(mean_interval(set_values(runs, set, f)));
        paired_fam[f] = interval_json(paired_difference(set_values(runs, set, f), set_values(baseline_runs, set, f)));
      }
      s["sets"][set] = {{"overall", interval_json(mean_interval(set_values(runs, set, "")))}, {"families", fam}};
      if (name != c.baseline_run().name)
        s["paired"][set] = {
            {"overall", interval_json(paired_difference(set_values(runs, set, ""), set_values(baseline_runs, set, "")))},
            {"families", paired_fam}};
    }
    if (!base.is_null())
      for (const std::string& set : text_sets) {
        std::vector<double> retained;
        for (double v : set_values(runs, set, "")) retained.push_back(v - base["sets"][set]["overall"].get<double>());
        s["retention"][set] = interval_json(mean_interval(retained));
      }
    std::vector<double> reach;
    int64_t reached = 0;
    for (const json& r : runs) {
      double step = NAN;
      if (!r.is_null() && std::isfinite(threshold))
        step = steps_to_reach(numbers(r["log"]["curve"]["step"]), numbers(r["log"]["curve"]["lm_loss"]), threshold);
      reached += std::isfinite(step) ? 1 : 0;
      reach.push_back(step);
    }
    s["steps_to_threshold"] = interval_json(mean_interval(reach));
    s["reached"] = reached;
    s["final_loss"] = interval_json(mean_interval(log_values(runs, "final_loss")));
    s["eval_loss"] = interval_json(mean_interval(log_values(runs, "eval_loss")));
    s["tokens_per_s"] = interval_json(mean_interval(log_values(runs, "tokens_per_s")));
    s["train_seconds"] = interval_json(mean_interval(top_values(runs, "train_seconds")));
    s["eval_seconds"] = interval_json(mean_interval(top_values(runs, "eval_seconds")));
    for (const json& r : runs)
      if (!r.is_null()) s["trainable_params"] = r["trainable_params"], s["active_params"] = r["active_params"];
    // the loss curve over seeds, at the steps every seed logged
    std::map<double, std::vector<double>> at_step;
    for (const json& r : runs) {
      if (r.is_null()) continue;
      const auto steps = numbers(r["log"]["curve"]["step"]), losses = numbers(r["log"]["curve"]["lm_loss"]);
      for (size_t i = 0; i < steps.size() && i < losses.size(); ++i) at_step[steps[i]].push_back(losses[i]);
    }
    json curve = {{"step", json::array()}, {"mean", json::array()}, {"lo", json::array()}, {"hi", json::array()}};
    for (const auto& [step, values] : at_step) {
      if (values.size() != runs.size()) continue;
      const MeanInterval m = mean_interval(values);
      const json i = interval_json(m);
      curve["step"].push_back(step), curve["mean"].push_back(i["mean"]), curve["lo"].push_back(i["lo"]),
          curve["hi"].push_back(i["hi"]);
    }
    s["curve"] = curve;
    stats[name] = s;
  }
  out["stats"] = stats;
  json raw = json::array();
  for (const json& j : jobs) {
    json r = j;
    r.erase("eval_spec");
    raw.push_back(r);
  }
  out["jobs"] = raw;
  double wall = 0;
  for (const json& j : jobs) wall += number(j, "seconds");
  out["job_seconds"] = wall;
  return out;
}

// ---- the report ------------------------------------------------------------------------------------------------

namespace {

std::string fmt(double v, int digits = 1) {
  if (!std::isfinite(v)) return "-";
  char buf[48];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

double num(const json& j, const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN; }

// "22.1 [20.3, 23.9]"; one seed: "22.1"
std::string with_interval(const json& i, int digits = 1) {
  const double m = num(i, "mean"), lo = num(i, "lo"), hi = num(i, "hi");
  if (!std::isfinite(m)) return "-";
  if (!std::isfinite(lo)) return fmt(m, digits);
  return fmt(m, digits) + " [" + fmt(lo, digits) + ", " + fmt(hi, digits) + "]";
}

std::string signed_interval(const json& i, int digits = 1) {
  const double m = num(i, "mean"), lo = num(i, "lo"), hi = num(i, "hi");
  auto s = [&](double v) { return (v > 0 ? "+" : "") + fmt(v, digits); };
  if (!std::isfinite(m)) return "-";
  if (!std::isfinite(lo)) return s(m);
  return s(m) + " [" + s(lo) + ", " + s(hi) + "]";
}

std::string md_table(const HtmlTable& t) {
  std::string md;
  if (!t.caption.empty()) md += t.caption + "\n\n";
  md += "|";
  for (const auto& h : t.header) md += " " + h + " |";
  md += "\n|";
  for (size_t i = 0; i < t.header.size(); ++i) md += i == 0 ? "---|" : "---:|";
  md += "\n";
  for (const auto& row : t.rows) {
    md += "|";
    for (const auto& cell : row) md += " " + cell + " |";
    md += "\n";
  }
  return md + "\n";
}

// What the paired intervals say, one sentence per config and set.
std::vector<std::string> conclusions(const json& r) {
  std::vector<std::string> lines;
  const std::string baseline = r["baseline"];
  const int64_t n_seeds = int64_t(r["seeds"].size());
  for (const std::string name : r["configs"]) {
    if (name == baseline) continue;
    for (const std::string set : r["sets"]) {
      const json& d = r["stats"][name]["paired"][set]["overall"];
      const double m = num(d, "mean"), lo = num(d, "lo"), hi = num(d, "hi");
      std::string line = name + " vs " + baseline + " on " + set + ": ";
      if (!std::isfinite(m)) {
        line += "no paired seeds.";
      } else if (!std::isfinite(lo)) {
        line += fmt(m) + " points on one seed: no interval, so nothing can be concluded from it.";
      } else if (lo > 0 || hi < 0) {
        line += std::string(m > 0 ? "better" : "worse") + " by " + fmt(std::fabs(m)) + " points (95% interval " +
                fmt(lo) + " to " + fmt(hi) + " over " + std::to_string(num(d, "n") > 0 ? int64_t(num(d, "n")) : 0) +
                " paired seeds excludes 0).";
      } else {
        line += fmt(m) + " points, 95% interval " + fmt(lo) + " to " + fmt(hi) + " over " +
                std::to_string(int64_t(num(d, "n"))) + " paired seeds: it includes 0, so no difference can be "
                "concluded; a true difference, if there is one, is likely within " +
                fmt(std::max(std::fabs(lo), std::fabs(hi))) + " points.";
      }
      lines.push_back(line);
    }
  }
  lines.push_back("The intervals are Student-t 95% intervals over " + std::to_string(n_seeds) +
                  " seeds: they cover what the seed changes (initialisation, dropout, routing noise, data order) on "
                  "this data and model, not another dataset, model size or training budget.");
  return lines;
}

}  // namespace

void write_compare_report(const CompareConfig& c, const json& r, const ReportExtras& extras) {
  const std::string out = c.out;
  write_json_file(out + "/results.json", r);
  const std::vector<std::string> names = r["configs"];
  const std::string baseline = r["baseline"];
  std::vector<HtmlSection> sections;
  std::string md = "# " + extras.title + "\n\n" + (extras.lead_md.empty() ? "" : extras.lead_md + "\n\n");
  std::string seeds;
  for (const auto& s : r["seeds"]) seeds += (seeds.empty() ? "" : ", ") + std::to_string(s.get<int64_t>());
  const std::string intro =
      std::to_string(names.size()) + " configs x " + std::to_string(r["seeds"].size()) + " seeds (" + seeds +
      "), the same data and steps; baseline " + baseline + ". Accuracy in %, by each set's official protocol, as the mean "
      "over seeds with its 95% interval in brackets. Rows 'untuned base', 'best constant answer' and 'majority "
      "answer' are floors: the model before tuning (asked with the same template), one fixed answer per task family "
      "chosen on the evaluation set itself (optimistic), and the set's most frequent answer given to every question.";
  md += intro + "\n\n";
  HtmlSection summary("Accuracy", intro);

  for (const std::string set : r["sets"]) {
    const std::vector<std::string> fams = r["families"][set];
    std::string metric = "VQAv2 metric";
    for (const CompareEvalSet& e : c.eval)
      if (e.name == set && e.metric == EvalMetric::kScienceqa) metric = "option letter, as eval_science_qa.py";
    HtmlTable t("Accuracy on " + set + " (" + metric + ", %, mean [95% interval])", {"config", "overall"});
    for (const auto& f : fams) t.header.push_back(f);
    if (!r["base"].is_null()) {
      const json& b = r["base"]["sets"][set];
      std::vector<std::string> row = {"untuned base", fmt(num(b, "overall"))};
      for (const auto& f : fams) row.push_back(fmt(num(b["families"], f.c_str())));
      t.rows.push_back(row);
    }
    {
      const json& fl = r["floor"][set];
      std::vector<std::string> row = {"best constant answer", fmt(num(fl, "overall"))};
      for (const auto& f : fams) row.push_back(fmt(num(fl["families"], f.c_str())));
      t.rows.push_back(row);
    }
    {
      const json& mj = r["floor"][set]["majority"];
      std::vector<std::string> row = {"majority answer (" + mj.value("answer", std::string()) + ")",
                                      fmt(num(mj, "overall"))};
      for (size_t i = 0; i < fams.size(); ++i) row.push_back("");
      t.rows.push_back(row);
    }
    for (const auto& name : names) {
      const json& s = r["stats"][name]["sets"][set];
      std::vector<std::string> row = {name, with_interval(s["overall"])};
      for (const auto& f : fams) row.push_back(with_interval(s["families"].value(f, json::object())));
      t.rows.push_back(row);
    }
    md += "## " + set + "\n\n" + md_table(t);
    summary.tables.push_back(t);
  }
  sections.push_back(summary);

  HtmlSection paired("Paired differences against " + baseline,
                     "Per seed, the config's accuracy minus the baseline's on the same seed; mean over seeds and its "
                     "95% interval, in points.");
  md += "## Paired differences against " + baseline + "\n\n" + paired.text + "\n\n";
  for (const std::string set : r["sets"]) {
    const std::vector<std::string> fams = r["families"][set];
    HtmlTable t(set + ": config - " + baseline, {"config", "overall"});
    for (const auto& f : fams) t.header.push_back(f);
    for (const auto& name : names) {
      if (name == baseline) continue;
      const json& d = r["stats"][name]["paired"][set];
      std::vector<std::string> row = {name, signed_interval(d["overall"])};
      for (const auto& f : fams) row.push_back(signed_interval(d["families"].value(f, json::object())));
      t.rows.push_back(row);
    }
    md += md_table(t);
    paired.tables.push_back(t);
  }
  std::string said;
  for (const std::string& line : conclusions(r)) said += line + "\n\n";
  paired.text += "\n\n" + said;
  md += "### What the intervals allow one to conclude\n\n" + said;
  sections.push_back(paired);

  const double threshold = num(r, "loss_threshold");
  HtmlTable training("Training and cost (mean [95% interval] over seeds)",
                     {"config", "final loss", "eval loss", "steps to loss <= " + fmt(threshold, 3), "reached",
                      "tokens/s", "train s", "eval s", "trainable", "active"});
  for (const std::string set : r["text_sets"]) training.header.push_back("retention on " + set);
  for (const auto& name : names) {
    const json& s = r["stats"][name];
    std::vector<std::string> row = {name,
                                    with_interval(s["final_loss"], 3),
                                    with_interval(s["eval_loss"], 3),
                                    with_interval(s["steps_to_threshold"], 0),
                                    std::to_string(s["reached"].get<int64_t>()) + "/" +
                                        std::to_string(r["seeds"].size()),
                                    with_interval(s["tokens_per_s"], 0),
                                    with_interval(s["train_seconds"], 0),
                                    with_interval(s["eval_seconds"], 0),
                                    std::to_string(s.value("trainable_params", int64_t(0))),
                                    std::to_string(s.value("active_params", int64_t(0)))};
    for (const std::string set : r["text_sets"])
      row.push_back(s.contains("retention") ? signed_interval(s["retention"][set]) : "-");
    training.rows.push_back(row);
  }
  const std::string training_text =
      "Final loss: the last logged window's mean language-model loss. Steps to reach: the first logged step whose "
      "window loss is at or below the threshold (by default the highest final loss of any run, a level every run "
      "reached), over the seeds that reached it. Retention: accuracy on a text-only set minus the untuned base's "
      "(below 0: the tuning made the language skill worse). Trainable: adapter and projector parameters; active: "
      "those a token uses (an expert counts top_k / n_experts of itself).";
  md += "## Training\n\n" + training_text + "\n\n" + md_table(training);
  HtmlSection train_section("Training", training_text);
  train_section.tables.push_back(training);

  LinePlot curves("Finetuning loss, mean over seeds with its 95% interval", "step", "language-model loss");
  for (const auto& name : names) {
    const json& cv = r["stats"][name]["curve"];
    Series s;
    s.name = name;
    s.x = numbers(cv["step"]);
    s.y = numbers(cv["mean"]);
    if (r["seeds"].size() > 1) s.lo = numbers(cv["lo"]), s.hi = numbers(cv["hi"]);
    if (!s.x.empty()) curves.series.push_back(s);
  }
  if (!curves.series.empty()) {
    plot_lines(out + "/loss_curves.png", curves);
    const std::string caption = "Training loss of each config, the mean over seeds at every logged step, with the "
                                "95% interval over seeds as a band.";
    train_section.figures.push_back({"loss_curves.png", caption});
    md += "![" + caption + "](loss_curves.png)\n\n";
  }
  sections.push_back(train_section);

  HtmlTable raw("Every run", {"config", "seed"});
  for (const std::string set : r["sets"]) raw.header.push_back(set);
  raw.header.push_back("final loss");
  raw.header.push_back("folder");
  for (const json& j : r["jobs"]) {
    if (j.value("job", "") == "base") continue;
    std::vector<std::string> row = {j.value("name", ""), std::to_string(j.value("seed", int64_t(0)))};
    for (const std::string set : r["sets"]) row.push_back(fmt(num(j["sets"][set], "overall")));
    row.push_back(fmt(num(j["log"], "final_loss"), 3));
    row.push_back("runs/" + j.value("name", "") + "/seed" + std::to_string(j.value("seed", int64_t(0))));
    raw.rows.push_back(row);
  }
  md += "## Every run\n\n" + md_table(raw);
  HtmlSection runs_section("Every run", "Each run folder holds run.json, metrics.jsonl, final/ and eval/ (the answers "
                                        "and the official score files).");
  runs_section.tables.push_back(raw);
  sections.push_back(runs_section);

  sections.insert(sections.end(), extras.sections.begin(), extras.sections.end());
  md += extras.md;
  write_text_file(out + "/report.md", md);
  write_text_file(out + "/report.html", html_page(extras.title, sections, extras.lead_md.empty() ? intro : extras.lead_md));
}

}  // namespace mole
