// mole compare --config compare.json [--set key=value ...] [--overwrite | --report-only] [--print-config]
// Named run configs x seeds on the same data and budget, each evaluated on the same held-out sets, with means,
// 95% intervals and paired differences (pipelines/compare.h). Start it several times to spread the runs over
// processes; run it again after an interruption to continue.
#include <cstdio>
#include <string>

#include "core/json_config.h"
#include "pipelines/args.h"
#include "pipelines/commands.h"
#include "pipelines/compare.h"
#include "pipelines/train_config.h"

namespace mole {

int cmd_compare(int argc, char** argv) {
  Args args("compare",
            "Train each named config of compare.json with each seed on the same data and steps, score every run "
            "and the untuned base on the same held-out sets, and write OUT/results.json, OUT/report.md and "
            "OUT/report.html (mean and 95% interval over seeds per task family, paired differences against the "
            "baseline, loss curves with bands, steps to a loss, retention of text skills, parameters, time). "
            "Resumable; several processes may share one compare (each run is claimed by a lock).");
  args.option("config", "compare config JSON (README: Comparing configs)", "", true)
      .repeated("set", "KEY=VALUE override of a compare config field, dotted (seeds=[0,1]); repeatable")
      .flag("overwrite", "start the compare over: remove OUT/runs, OUT/base and the report first")
      .flag("report-only", "train and score nothing: write the report from the results in OUT")
      .flag("print-config", "print the resolved compare config and exit")
      .epilog("Fields of compare.json (type = default):\n" + fields_help(describe_fields<CompareConfig>()) +
              "\nEach entry of runs:\n" + fields_help(describe_fields<CompareRun>()) +
              "\nEach entry of eval:\n" + fields_help(describe_fields<CompareEvalSet>()));
  if (!args.parse(argc, argv)) return 0;
  json j = read_json_file(args.get("config"));
  for (const std::string& assignment : args.get_all("set")) apply_override(j, assignment);
  const CompareConfig config = CompareConfig::from_json(j, args.get("config"));
  if (args.has("print-config")) {
    std::printf("%s\n", write_fields(config).dump(2).c_str());
    return 0;
  }
  if (args.has("overwrite") && args.has("report-only"))
    throw ConfigError("compare: --overwrite and --report-only exclude each other");
  CompareOptions options;
  options.overwrite = args.has("overwrite");
  options.report_only = args.has("report-only");
  const CompareOutcome outcome = run_compare(config, options);
  if (outcome.report_written)
    std::printf("compare: %lld jobs (%lld run now); report: %s/report.html, %s/report.md; numbers: %s/results.json\n",
                (long long)outcome.jobs, (long long)outcome.ran, config.out.c_str(), config.out.c_str(),
                config.out.c_str());
  return 0;
}

}  // namespace mole
