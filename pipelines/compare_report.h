// The statistics and the report of `mole compare` (pipelines/compare.h): from every job's compare_result.json to
// OUT/results.json (every number, per seed and aggregated), OUT/report.md and OUT/report.html (the same tables,
// the loss curves with their bands, and sentences saying what the intervals allow one to conclude).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/stats.h"
#include "pipelines/compare.h"
#include "report/html.h"

namespace mole {

// {"mean", "lo", "hi", "sd", "n"}; NaN as null.
nlohmann::json interval_json(const MeanInterval& m);

// The best constant answer per task family on an eval set (chosen on the set itself, so an optimistic floor):
// {"overall", "families": {family: accuracy}, "answers": {family: answer}}, VQAv2 metric, %.
nlohmann::json constant_answer_floor(const CompareEvalSet& set);

// The first logged step whose loss is <= threshold (NaN when none is).
double steps_to_reach(const std::vector<double>& steps, const std::vector<double>& losses, double threshold);

// results.json from the jobs' results (the base's, when there is one, and one per config and seed).
nlohmann::json aggregate_compare(const CompareConfig& config, const std::vector<nlohmann::json>& job_results);

// What a caller (the demo) adds to the report: a title, and sections after the compare's (routing pictures).
struct ReportExtras {
  std::string title = "mole compare";
  std::string lead_md;                      // Markdown right under the title
  std::vector<HtmlSection> sections;       // appended to the HTML page
  std::string md;                           // appended to report.md
};

// OUT/results.json, OUT/report.md, OUT/report.html and OUT/loss_curves.png.
void write_compare_report(const CompareConfig& config, const nlohmann::json& results,
                          const ReportExtras& extras = {});

}  // namespace mole
