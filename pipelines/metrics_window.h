// What `mole train` reports as it goes: each optimizer step's numbers accumulate in a window of log_every steps,
// shown three ways: a progress bar on a terminal (every step), a text line per window on stderr, and a JSON line
// per window in RUN/metrics.jsonl (step, epoch, lr, loss, lm_loss, aux, grad_norm, tokens_per_s, samples_per_s,
// data_wait_s, skipped_steps, skipped_records, seconds, and for MoLE the routing summary, expert_load,
// expert_modality_mi and, when the data has task families, expert_family).
// Non-finite steps and the run's end are events in the same log.
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "moe/family_routing.h"
#include "moe/routing_stats.h"
#include "pipelines/train_config.h"

namespace mole {

// The numbers of one optimizer step (grad_accum micro-batches).
struct StepStats {
  double loss = 0.0;                   // lm_loss + weighted balance losses, mean over the micro-batches
  double lm_loss = 0.0;                // next-token cross-entropy
  std::map<std::string, double> aux;   // each balance loss, unweighted, summed over layers
  double grad_norm = 0.0;              // before clipping
  int64_t tokens = 0, samples = 0;     // non-padding tokens (image placeholders expanded), samples
  double data_wait_s = 0.0;            // time the step waited for the loader
  bool finite() const;
};

// Where the run stands when a window is written.
struct WindowPosition {
  int64_t step = 0, total_steps = 0;
  double epoch = 0.0;                  // fractional
  double lr = 0.0;                     // the rate the step used
  int64_t skipped_records = 0;         // bad records so far
  double seconds = 0.0;                // since this process started training
  double eta_seconds = 0.0;
};

class MetricsWindow {
 public:
  // metrics.jsonl is appended to when `append` (a resumed run), else started anew.
  MetricsWindow(const std::string& metrics_path, bool append, Stage stage, ProgressMode progress);

  void add(const StepStats& step);
  // The bar (when shown): this step's loss, lr and first aux loss, and the time left.
  void show_progress(const WindowPosition& at, const StepStats& step);
  // A step whose loss or gradient was not finite: logged as an event and counted in the window.
  void skipped_step(int64_t step, const StepStats& stats, int64_t streak);
  // The window's JSON line and text line; then the window starts empty. routing: the window's statistics;
  // families: its top-1 experts by task family (null or without layers: none).
  void write_window(const WindowPosition& at, const RoutingTable* routing,
                    const FamilyRoutingTable* families = nullptr);
  // Any other event line (e.g. the end of the run).
  void write_event(const nlohmann::json& event);
  // Ends the bar's line.
  void finish();

 private:
  std::ofstream log_;
  std::string stage_;
  bool bar_ = false, lines_ = false;
  // the window
  double loss_ = 0, lm_ = 0, norm_ = 0, wait_ = 0;
  std::map<std::string, double> aux_;
  int64_t steps_ = 0, tokens_ = 0, samples_ = 0, bad_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mole
