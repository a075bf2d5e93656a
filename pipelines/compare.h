// `mole compare`: named run configs x seeds, trained on the same data with the same budget and evaluated on the
// same held-out sets, so that a difference between two adapters can be told from what a seed moves. The seed
// (run.seed) changes the initialisation, dropout, routing noise and data order; everything else comes from the
// configs. Every (config, seed) is one `mole train` run folder plus its evaluation, each a job:
//
//   OUT/base/compare_result.json                       the untuned base, evaluated once (greedy, seed-free)
//   OUT/runs/NAME/seedS/                               the run folder (run.json, metrics.jsonl, checkpoints, final)
//   OUT/runs/NAME/seedS/eval/SET_{answers.jsonl,scores.json}
//   OUT/runs/NAME/seedS/compare_result.json            what the report reads: scores, loss curve, parameters, time
//   OUT/results.json, OUT/report.md, OUT/report.html   written once every job has its result
//
// Resumable: a job with a result is done (unless the evaluation it was scored with changed: then only the
// evaluation runs again); a run folder with a checkpoint resumes from it exactly; a run whose saved run.json
// differs from what the compare config now says is an error (start over with --overwrite). Several processes
// may work on one compare at once (`mole compare` started N times, on one machine or on several sharing the
// folder): each job is claimed by an advisory lock (OUT/locks/JOB.lock, flock), so a job runs once; a process
// that finds every job done or claimed writes the report when all results exist, else says which are missing.
//
// Statistics (eval/stats.h): per eval set and task family (the questions' "category") the mean over seeds and its
// 95% t interval; paired differences against the baseline config (pairing by seed); steps to reach a loss every
// run reached; text-skill retention (accuracy on the sets marked "text" minus the untuned base's); the best
// constant answer per family as the floor a model must clear.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "core/limits.h"

namespace mole {

// How an eval set is scored: the official VQAv2 metric (10 answers per question), or the letter of a multiple
// choice as LLaVA's eval_science_qa.py extracts it (ScienceQA's problems.json layout: choices, answer index).
enum class EvalMetric { kVqav2, kScienceqa };
template <>
const EnumTable<EvalMetric>& enum_table<EvalMetric>();  // vqav2 | scienceqa

struct CompareEvalSet {
  std::string name;         // "vqa": names the files and the report's columns
  std::string questions;    // LLaVA question jsonl (question_id, image, text, category)
  std::string annotations;  // vqav2: VQAv2 annotations json; scienceqa: problems.json (ids = question ids)
  EvalMetric metric = EvalMetric::kVqav2;
  std::string images;       // folder the questions' images are relative to
  int64_t limit = 0;        // the first N questions only (0: all)
  bool text = false;        // a text-only skill set: the report's retention (forgetting) column

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("name", self.name, "the set's name in files and tables");
    v("questions", self.questions, "LLaVA question jsonl (question_id, image, text, category)");
    v("annotations", self.annotations, "vqav2: VQAv2-format annotations (10 answers per question); scienceqa: "
                                       "a ScienceQA problems.json (choices, answer index) keyed by question id");
    v("metric", self.metric, "vqav2 (the official VQAv2 accuracy) or scienceqa (the option letter, as "
                             "eval_science_qa.py reads it)");
    v("images", self.images, "folder the questions' images are relative to");
    v("limit", self.limit, "score the first N questions only (0: all)", between(0, kMaxCount));
    v("text", self.text, "a text-only skill set: retention against the untuned base is reported for it");
  }
};

struct CompareRun {
  std::string name;
  nlohmann::json config = nlohmann::json::object();  // a JSON merge patch (RFC 7386) over CompareConfig::config

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("name", self.name, "the config's name (folders, tables)");
    v("config", self.config, "merged over the shared config (objects merge key by key, a list or value "
                             "replaces, null removes): the adapter, its losses, anything a run config holds");
  }
};

struct CompareConfig {
  std::string out = "compare";
  std::vector<int64_t> seeds = {0, 1, 2};
  std::string baseline;                 // a run name; default the first
  nlohmann::json config;                // the run config (mole train's run.json) every run starts from
  std::vector<CompareRun> runs;
  std::vector<CompareEvalSet> eval;
  std::string untuned;                  // model evaluated as the untuned base; "none" skips it
  int64_t max_new_tokens = 128;
  int64_t batch_size = 16;
  std::optional<double> loss_threshold;  // default: the highest final loss of any run

  template <class Self, class V>
  static void fields(Self& self, V& v) {
    v("out", self.out, "the compare folder");
    v("seeds", self.seeds, "run.seed of each repetition (init, dropout, routing noise, data order)", between(0, 1.8446744073709552e19));
    v("baseline", self.baseline, "the run the paired differences are taken against (default: the first)");
    v("config", self.config, "the run config every run starts from (mole train's run.json without out and "
                             "run.seed)");
    v("runs", self.runs, "the named configs compared");
    v("eval", self.eval, "held-out sets every run and the untuned base are scored on");
    v("untuned", self.untuned, "model folder scored as the untuned base (default: config.model.base when no "
                               "projector is put on it, else the folder of model.projector when it holds a mole "
                               "run; \"none\": no base row)");
    v("max_new_tokens", self.max_new_tokens, "greedy answer length", between(1, kMaxSequence));
    v("batch_size", self.batch_size, "questions answered per batch", between(1, kMaxBatch));
    v("loss_threshold", self.loss_threshold, "the loss for 'steps to reach' (default: the highest final "
                                             "logged loss of any run, a level every run reached)", at_least(0));
  }
  void validate(const FieldPath& at) const;

  static CompareConfig from_json(const nlohmann::json& j, const std::string& file);
  // The run config of one job: config merged with the run's patch, out and run.seed set.
  nlohmann::json run_config(const CompareRun& run, int64_t seed) const;
  std::string run_dir(const std::string& name, int64_t seed) const;  // OUT/runs/NAME/seedS
  const CompareRun& baseline_run() const;
};

struct CompareOptions {
  bool overwrite = false;   // remove OUT/runs, OUT/base and the report first: start the compare over
  bool report_only = false; // run nothing: write the report from the results there are (all must exist)
};

struct CompareOutcome {
  int64_t jobs = 0, done = 0, ran = 0;   // all jobs, with a result at the end, run by this process
  std::vector<std::string> missing;       // jobs without a result (claimed by another process, or failed)
  bool report_written = false;
  nlohmann::json results;                 // results.json when written
};

CompareOutcome run_compare(const CompareConfig& config, const CompareOptions& options = {});

// Adapter and projector parameters of a loaded model: trainable, and active per token (an expert-stacked tensor
// (E, ., .) counts top_k / E of itself; routers count whole).
struct ParameterCounts {
  int64_t trainable = 0, active = 0;
};
struct TrainedModel;
ParameterCounts adapter_parameter_counts(TrainedModel& model);

}  // namespace mole
