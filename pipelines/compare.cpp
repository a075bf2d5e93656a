#include "pipelines/compare.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include <torch/torch.h>

#include "core/json_config.h"
#include "eval/answer.h"
#include "eval/vqa_data.h"
#include "eval/vqa_eval_files.h"
#include "eval/vqa_metrics.h"
#include "model/trained_model.h"
#include "pipelines/compare_report.h"
#include "pipelines/train_config.h"
#include "pipelines/trainer.h"

namespace mole {

namespace fs = std::filesystem;
using json = nlohmann::json;

MOLE_ENUM_NAMES(EvalMetric, "eval metric", {EvalMetric::kVqav2, "vqav2"}, {EvalMetric::kScienceqa, "scienceqa"})

// ---- the config ------------------------------------------------------------------------------------------------

void CompareConfig::validate(const FieldPath& at) const {
  if (out.empty()) at.fail("out", "is required");
  if (seeds.empty()) at.fail("seeds", "needs at least one seed");
  std::set<int64_t> seen_seeds;
  for (int64_t s : seeds) {
    if (s < 0) at.fail("seeds", "a seed must be >= 0, got " + std::to_string(s));
    if (!seen_seeds.insert(s).second) at.fail("seeds", "seed " + std::to_string(s) + " is listed twice");
  }
  if (!config.is_object()) at.fail("config", "is required: the run config every run starts from");
  if (config.contains("out")) at.fail("config", "must not set out: each run's folder is OUT/runs/NAME/seedS");
  if (config.contains("run") && config["run"].is_object() && config["run"].contains("seed"))
    at.fail("config", "must not set run.seed: the seeds list gives each run's seed");
  if (runs.empty()) at.fail("runs", "needs at least one named config");
  const std::regex name_rule("[A-Za-z0-9][A-Za-z0-9_.-]*");
  std::set<std::string> names;
  for (size_t i = 0; i < runs.size(); ++i) {
    const std::string key = "runs[" + std::to_string(i) + "]";
    if (!std::regex_match(runs[i].name, name_rule))
      at.fail(key + ".name", "'" + runs[i].name + "' is not a folder-safe name (letters, digits, _ . -)");
    if (runs[i].name == "base") at.fail(key + ".name", "'base' names the untuned model's row");
    if (!names.insert(runs[i].name).second) at.fail(key + ".name", "'" + runs[i].name + "' is used twice");
    if (!runs[i].config.is_object()) at.fail(key + ".config", "must be an object (a merge patch)");
    if (runs[i].config.contains("out")) at.fail(key + ".config", "must not set out");
    if (runs[i].config.contains("run") && runs[i].config["run"].is_object() && runs[i].config["run"].contains("seed"))
      at.fail(key + ".config", "must not set run.seed: the seeds list gives it");
  }
  if (!baseline.empty() && !names.count(baseline))
    at.fail("baseline", "'" + baseline + "' is not among the runs");
  if (eval.empty()) at.fail("eval", "needs at least one held-out set");
  std::set<std::string> sets;
  for (size_t i = 0; i < eval.size(); ++i) {
    const std::string key = "eval[" + std::to_string(i) + "]";
    if (!std::regex_match(eval[i].name, name_rule))
      at.fail(key + ".name", "'" + eval[i].name + "' is not a folder-safe name (letters, digits, _ . -)");
    if (!sets.insert(eval[i].name).second) at.fail(key + ".name", "'" + eval[i].name + "' is used twice");
    if (eval[i].questions.empty()) at.fail(key + ".questions", "is required");
    if (eval[i].annotations.empty()) at.fail(key + ".annotations", "is required");
    if (eval[i].limit < 0) at.fail(key + ".limit", "must be >= 0 (0: all), got " + std::to_string(eval[i].limit));
  }
  if (max_new_tokens < 1) at.fail("max_new_tokens", "must be >= 1, got " + std::to_string(max_new_tokens));
  if (batch_size < 1) at.fail("batch_size", "must be >= 1, got " + std::to_string(batch_size));
  if (loss_threshold && !std::isfinite(*loss_threshold)) at.fail("loss_threshold", "must be a finite number");
}

CompareConfig CompareConfig::from_json(const json& j, const std::string& file) {
  CompareConfig c = read_fields<CompareConfig>(j, file);
  c.out = fs::absolute(c.out).lexically_normal().string();
  // Eval files are read after the first run trains: a wrong path must fail now, not minutes later.
  for (size_t i = 0; i < c.eval.size(); ++i)
    for (const auto& [key, path] : {std::pair<const char*, const std::string&>{"questions", c.eval[i].questions},
                                    {"annotations", c.eval[i].annotations}})
      if (!fs::is_regular_file(path))
        throw ConfigError(file + ": eval[" + std::to_string(i) + "]." + key + ": no such file: " + path);
  // Every run's config is read now, so a typo in any of them is an error before the first run trains.
  for (const CompareRun& run : c.runs) TrainConfig::from_json(c.run_config(run, c.seeds.front()), file + ": runs." + run.name);
  return c;
}

json CompareConfig::run_config(const CompareRun& run, int64_t seed) const {
  json merged = config;
  merged.merge_patch(run.config);
  merged["out"] = run_dir(run.name, seed);
  if (!merged.contains("run") || !merged["run"].is_object()) merged["run"] = json::object();
  merged["run"]["seed"] = seed;
  return merged;
}

std::string CompareConfig::run_dir(const std::string& name, int64_t seed) const {
  return out + "/runs/" + name + "/seed" + std::to_string(seed);
}

const CompareRun& CompareConfig::baseline_run() const {
  for (const CompareRun& r : runs)
    if (r.name == baseline) return r;
  return runs.front();
}

// ---- parameters ------------------------------------------------------------------------------------------------

ParameterCounts adapter_parameter_counts(TrainedModel& m) {
  ParameterCounts counts;
  double active = 0;
  double k = 1, e = 1;
  if (m.spec.adapter.is_object() && m.spec.adapter.value("kind", "") == "mole") {
    k = double(m.spec.adapter.value("top_k", int64_t(2)));
    e = double(m.spec.adapter.value("n_experts", int64_t(8)));
  }
  for (const auto& item : m.model->named_parameters()) {
    const std::string& name = item.key();
    const bool adapter = name.find(".adapter.") != std::string::npos;
    const bool projector = name.rfind("multi_modal_projector.", 0) == 0;
    if (!adapter && !projector) continue;
    const int64_t n = item.value().numel();
    counts.trainable += n;
    // expert-stacked (E, ., .): top_k / E of it per token; a router's (E, D) weight counts whole
    active += adapter && item.value().dim() == 3 ? double(n) * k / e : double(n);
  }
  counts.active = int64_t(active);
  return counts;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// An advisory lock on a job: held while this process works on it, released by the kernel if it dies.
class JobLock {
 public:
  explicit JobLock(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error(path + ": cannot create the job lock");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~JobLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  JobLock(const JobLock&) = delete;
  JobLock& operator=(const JobLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// What the scores of a job depend on besides the model: a result scored under another spec is scored again.
json eval_spec(const CompareConfig& c) {
  return {{"eval", field_to_json(c.eval)}, {"max_new_tokens", c.max_new_tokens}, {"batch_size", c.batch_size}};
}

// Scores `model` on every eval set; answers and official score files go to dir/eval/.
json evaluate_sets(TrainedModel& model, const CompareConfig& c, const std::string& dir, const std::string& model_id) {
  json sets = json::object();
  fs::create_directories(dir + "/eval");
  for (const CompareEvalSet& set : c.eval) {
    auto questions = read_llava_questions(set.questions);
    if (set.limit > 0 && int64_t(questions.size()) > set.limit) questions.resize(size_t(set.limit));
    AnswerOptions a;
    a.batch_size = c.batch_size;
    a.max_new_tokens = c.max_new_tokens;
    a.image_dir = set.images;
    const auto answers = answer_questions(model, questions, a);
    json scores, overall, families;
    if (set.metric == EvalMetric::kVqav2) {
      scores = score_answers_vqav2(answers, set.annotations, /*only_answered=*/set.limit > 0);
      overall = scores.at("overall"), families = scores.at("perCategory");
    } else {
      std::vector<std::string> ids;
      std::map<std::string, ScienceQaPrediction> predictions;
      for (const ModelAnswer& m : answers) {
        ids.push_back(std::to_string(m.question_id));
        predictions[ids.back()] = {m.text, m.prompt};
      }
      const auto problems = read_scienceqa_problems(set.annotations, "test", ids);
      const ScienceQaScore score = score_scienceqa(problems, predictions);
      scores = score.to_json();
      overall = score.accuracy;
      std::map<std::string, std::pair<int64_t, int64_t>> by_family;  // correct, count
      for (const ModelAnswer& m : answers) {
        const std::string id = std::to_string(m.question_id);
        auto& [right, n] = by_family[m.category];
        right += score.pred_index.at(id) == problems.at(id).answer;
        ++n;
      }
      families = json::object();
      for (const auto& [family, rn] : by_family)
        families[family.empty() ? "(none)" : family] = 100.0 * double(rn.first) / double(rn.second);
    }
    write_answers_jsonl(dir + "/eval/" + set.name + "_answers.jsonl", answers, model_id);
    write_json_file(dir + "/eval/" + set.name + "_scores.json", scores);
    sets[set.name] = {{"overall", overall}, {"families", families}, {"questions", int64_t(answers.size())}};
    std::fprintf(stderr, "compare: %s on %s: %.2f\n", model_id.c_str(), set.name.c_str(), overall.get<double>());
  }
  return sets;
}

// The logged language-model loss per step (the last line of a step wins), the median tokens/s, the last eval loss.
json read_training_log(const std::string& metrics) {
  std::map<int64_t, double> curve;
  std::vector<double> speeds;
  double eval_loss = NAN;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) continue;
    if (j.contains("lm_loss") && j["lm_loss"].is_number()) {
      curve[j["step"].get<int64_t>()] = j["lm_loss"].get<double>();
      if (j.contains("tokens_per_s") && j["tokens_per_s"].is_number()) speeds.push_back(j["tokens_per_s"].get<double>());
    }
    if (j.contains("eval_loss") && j["eval_loss"].is_number()) eval_loss = j["eval_loss"].get<double>();
  }
  json steps = json::array(), losses = json::array();
  for (const auto& [step, loss] : curve) steps.push_back(step), losses.push_back(loss);
  double median = NAN;
  if (!speeds.empty()) {
    std::sort(speeds.begin(), speeds.end());
    median = speeds[speeds.size() / 2];
  }
  json out = {{"curve", {{"step", steps}, {"lm_loss", losses}}}};
  out["final_loss"] = curve.empty() ? json() : json(curve.rbegin()->second);
  out["tokens_per_s"] = std::isfinite(median) ? json(median) : json();
  out["eval_loss"] = std::isfinite(eval_loss) ? json(eval_loss) : json();
  return out;
}

// The folder scored as the untuned base ("" when none).
std::string untuned_model(const CompareConfig& c) {
  if (c.untuned == "none") return "";
  if (!c.untuned.empty()) return c.untuned;
  const json model = c.config.value("model", json::object());
  const std::string base = model.value("base", "");
  const std::string projector = model.value("projector", "");
  if (projector.empty()) {
    if (base.empty())
      throw ConfigError("compare: untuned is not given and config.model.base is empty: name the model to score as "
                        "the untuned base, or \"none\"");
    return base;
  }
  const fs::path folder = fs::path(projector).parent_path();
  if (fs::exists(folder / "model.json")) return folder.string();
  throw ConfigError("compare: config.model.projector (" + projector + ") is not in a mole run's final folder, so "
                    "the untuned model (base + that projector) has no folder: set untuned to one, or \"none\"");
}

struct Job {
  std::string id;   // "base" or NAME/seedS
  std::string dir;  // where its compare_result.json goes
  const CompareRun* run = nullptr;  // null for the base
  int64_t seed = 0;
};

std::vector<Job> plan_jobs(const CompareConfig& c) {
  std::vector<Job> jobs;
  if (!untuned_model(c).empty()) jobs.push_back({"base", c.out + "/base", nullptr, 0});
  for (int64_t seed : c.seeds)  // seed-major: an interrupted compare has every config of its first seeds
    for (const CompareRun& run : c.runs)
      jobs.push_back({run.name + "/seed" + std::to_string(seed), c.run_dir(run.name, seed), &run, seed});
  return jobs;
}

bool has_result(const Job& job, const CompareConfig& c) {
  const std::string path = job.dir + "/compare_result.json";
  if (!fs::exists(path)) return false;
  return read_json_file(path).value("eval_spec", json()) == eval_spec(c);
}

void run_job(const Job& job, const CompareConfig& c) {
  const auto t0 = std::chrono::steady_clock::now();
  json result = {{"job", job.id}, {"eval_spec", eval_spec(c)}};
  std::string model_dir;
  const std::string device = c.config.value("run", json::object()).value("device", "cpu");
  if (job.run == nullptr) {
    model_dir = untuned_model(c);
    result["name"] = "base";
  } else {
    result["name"] = job.run->name;
    result["seed"] = job.seed;
    const json run_json = c.run_config(*job.run, job.seed);
    const TrainConfig tc = TrainConfig::from_json(run_json, "compare " + job.id);
    // A finished run is kept; one with a checkpoint continues exactly from it; anything else starts over.
    const bool finished = fs::exists(job.dir + "/final/model.json");
    const bool has_checkpoint = fs::exists(job.dir + "/checkpoints") && !fs::is_empty(job.dir + "/checkpoints");
    if ((finished || has_checkpoint) && fs::exists(job.dir + "/run.json")) {
      const auto changes = config_changes(read_json_file(job.dir + "/run.json"), tc.to_json());
      if (!changes.empty()) {
        std::string list;
        for (const std::string& change : changes) list += "\n  " + change;
        throw ConfigError(job.dir + ": trained with a config that differs from what the compare config now says:" +
                          list + "\nstart the compare over with --overwrite, or use another out folder");
      }
    }
    double train_seconds = 0;
    if (!finished) {
      RunFolderRules rules;
      rules.overwrite = !has_checkpoint;  // a run that died before its first checkpoint starts over
      const auto t_train = std::chrono::steady_clock::now();
      const TrainResult r = run_training(tc, has_checkpoint, {}, rules);
      if (r.interrupted || r.stopped)
        throw std::runtime_error(job.dir + ": training stopped before its last step (checkpoint in " + r.final_dir +
                                 "); run mole compare again to continue it");
      train_seconds = seconds_since(t_train);
      result["resumed"] = has_checkpoint;
    } else {
      const std::string saved = job.dir + "/compare_train_seconds.json";
      if (fs::exists(saved)) train_seconds = read_json_file(saved).value("seconds", 0.0);
    }
    if (!finished) write_json_file(job.dir + "/compare_train_seconds.json", {{"seconds", train_seconds}});
    result["train_seconds"] = train_seconds;
    result["log"] = read_training_log(job.dir + "/metrics.jsonl");
    model_dir = job.dir;
  }
  const auto t_eval = std::chrono::steady_clock::now();
  TrainedModel model = load_trained(model_dir, torch::Device(device));
  if (job.run == nullptr) {
    // the base answers in the tuned runs' conversation template, so every row is asked the same prompts
    const TrainConfig tc = TrainConfig::from_json(c.run_config(c.runs.front(), c.seeds.front()), "compare");
    model.conversation_template = tc.data.conversation_template;
  }
  const ParameterCounts params = adapter_parameter_counts(model);
  result["trainable_params"] = params.trainable;
  result["active_params"] = params.active;
  result["model"] = model_dir;
  result["sets"] = evaluate_sets(model, c, job.dir, job.id);
  result["eval_seconds"] = seconds_since(t_eval);
  result["seconds"] = seconds_since(t0);
  fs::create_directories(job.dir);
  write_json_file(job.dir + "/compare_result.json", result);
}

}  // namespace

CompareOutcome run_compare(const CompareConfig& c, const CompareOptions& options) {
  CompareOutcome outcome;
  if (options.overwrite && !options.report_only)
    for (const char* entry : {"runs", "base", "locks", "results.json", "report.md", "report.html"})
      fs::remove_all(c.out + "/" + entry);
  fs::create_directories(c.out + "/locks");
  write_json_file(c.out + "/compare.json", write_fields(c));
  const std::vector<Job> jobs = plan_jobs(c);
  outcome.jobs = int64_t(jobs.size());
  if (!options.report_only) {
    for (size_t i = 0; i < jobs.size(); ++i) {
      const Job& job = jobs[i];
      if (has_result(job, c)) continue;
      std::string lock_name = job.id;
      std::replace(lock_name.begin(), lock_name.end(), '/', '.');
      JobLock lock(c.out + "/locks/" + lock_name + ".lock");
      if (!lock.held()) {
        std::fprintf(stderr, "compare: %s is being worked on by another process; skipped\n", job.id.c_str());
        continue;
      }
      if (has_result(job, c)) continue;  // finished by another process between the two looks
      std::fprintf(stderr, "\n== compare: job %zu/%zu: %s\n", i + 1, jobs.size(), job.id.c_str());
      run_job(job, c);
      ++outcome.ran;
    }
  }
  std::vector<json> results;
  for (const Job& job : jobs) {
    if (has_result(job, c)) {
      ++outcome.done;
      results.push_back(read_json_file(job.dir + "/compare_result.json"));
    } else {
      outcome.missing.push_back(job.id);
    }
  }
  if (!outcome.missing.empty()) {
    std::string list;
    for (const std::string& m : outcome.missing) list += " " + m;
    std::fprintf(stderr, "compare: %zu of %lld jobs have no result yet:%s\nthe report is written when every job "
                         "has one (run mole compare again, or wait for the processes working on them)\n",
                 outcome.missing.size(), (long long)outcome.jobs, list.c_str());
    if (options.report_only)
      throw ConfigError(c.out + ": --report-only, but " + std::to_string(outcome.missing.size()) +
                        " jobs have no result:" + list);
    return outcome;
  }
  outcome.results = aggregate_compare(c, results);
  write_compare_report(c, outcome.results);
  outcome.report_written = true;
  return outcome;
}

}  // namespace mole
