#include "pipelines/metrics_window.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "core/json_config.h"
#include "moe/routing_info.h"

namespace mole {

namespace {

std::string clock_text(double seconds) {
  char buf[32];
  const int64_t s = int64_t(seconds + 0.5);
  std::snprintf(buf, sizeof(buf), "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

// The process's peak resident set so far, MiB (Linux reports ru_maxrss in KiB).
double peak_rss_mib() {
  struct rusage usage {};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return -1.0;
  return double(usage.ru_maxrss) / 1024.0;
}

}  // namespace

bool StepStats::finite() const { return std::isfinite(loss) && std::isfinite(grad_norm); }

MetricsWindow::MetricsWindow(const std::string& metrics_path, bool append, Stage stage, ProgressMode progress)
    : log_(metrics_path, append ? std::ios::app : std::ios::trunc),
      stage_(enum_name(stage)),
      start_(std::chrono::steady_clock::now()) {
  if (!log_) throw ConfigError(metrics_path + ": cannot write the metrics log");
  const bool tty = ::isatty(STDERR_FILENO);
  bar_ = progress == ProgressMode::kBar || (progress == ProgressMode::kAuto && tty);
  lines_ = progress == ProgressMode::kLines || (progress == ProgressMode::kAuto && !tty);
}

void MetricsWindow::add(const StepStats& s) {
  loss_ += s.loss;
  lm_ += s.lm_loss;
  norm_ += s.grad_norm;
  wait_ += s.data_wait_s;
  for (const auto& [name, v] : s.aux) aux_[name] += v;
  ++steps_;
  tokens_ += s.tokens;
  samples_ += s.samples;
}

void MetricsWindow::show_progress(const WindowPosition& at, const StepStats& s) {
  if (!bar_) return;
  std::fprintf(stderr, "\r[%s] step %lld/%lld loss %.4f lr %.2e %s ETA %s   ", stage_.c_str(), (long long)at.step,
               (long long)at.total_steps, s.loss, at.lr,
               s.aux.empty() ? "" : ("aux " + std::to_string(s.aux.begin()->second)).c_str(),
               clock_text(at.eta_seconds).c_str());
  std::fflush(stderr);
}

void MetricsWindow::skipped_step(int64_t step, const StepStats& s, int64_t streak) {
  ++bad_;
  tokens_ += s.tokens;
  samples_ += s.samples;
  wait_ += s.data_wait_s;
  write_event({{"step", step},
               {"event", "non_finite"},
               {"loss", std::isfinite(s.loss) ? s.loss : -1.0},
               {"grad_norm", std::isfinite(s.grad_norm) ? s.grad_norm : -1.0},
               {"streak", streak}});
  std::fprintf(stderr, "\nstep %lld: non-finite %s; step skipped (%lld in a row)\n", (long long)step,
               std::isfinite(s.loss) ? "gradient" : "loss", (long long)streak);
}

void MetricsWindow::write_window(const WindowPosition& at, const RoutingTable* routing,
                                 const FamilyRoutingTable* families) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double n = double(std::max<int64_t>(1, steps_));
  json aux = json::object();
  for (const auto& [name, v] : aux_) aux[name] = v / n;
  json line = {{"step", at.step},
               {"epoch", at.epoch},
               {"lr", at.lr},
               {"loss", loss_ / n},
               {"lm_loss", lm_ / n},
               {"aux", aux},
               {"grad_norm", norm_ / n},
               {"tokens", tokens_},
               {"samples", samples_},
               {"tokens_per_s", double(tokens_) / seconds},
               {"samples_per_s", double(samples_) / seconds},
               {"peak_rss_mib", peak_rss_mib()},
               {"data_wait_s", wait_},
               {"skipped_steps", bad_},
               {"skipped_records", at.skipped_records},
               {"seconds", at.seconds}};
  const bool routed = routing && !routing->layers.empty();
  if (routed) {
    line["routing"] = routing->summary_json();
    line["expert_load"] = routing->expert_load();
    // I(top-1 expert; modality) per layer over the window, nats (moe/routing_info.h)
    json mi = json::object();
    double sum = 0;
    const auto info = routing_information({{"all", *routing}}, PhaseView::kBoth);
    for (const LayerInformation& l : info) mi[l.layer] = l.mi_modality, sum += l.mi_modality;
    line["expert_modality_mi"] = {{"mean", info.empty() ? 0.0 : sum / double(info.size())}, {"layers", mi}};
  }
  if (families && !families->layers.empty()) line["expert_family"] = families->summary_json();
  write_event(line);
  if (lines_)
    std::fprintf(stderr, "[%s] step %lld/%lld loss %.4f lr %.2e grad %.3f %.0f tok/s wait %.2fs %s ETA %s\n",
                 stage_.c_str(), (long long)at.step, (long long)at.total_steps, loss_ / n, at.lr, norm_ / n,
                 double(tokens_) / seconds, wait_, routed ? routing->summary().c_str() : "",
                 clock_text(at.eta_seconds).c_str());
  loss_ = lm_ = norm_ = wait_ = 0;
  aux_.clear();
  steps_ = tokens_ = samples_ = bad_ = 0;
  start_ = std::chrono::steady_clock::now();
}

void MetricsWindow::write_event(const json& event) { log_ << event.dump() << "\n" << std::flush; }

void MetricsWindow::finish() {
  if (bar_) std::fprintf(stderr, "\n");
}

}  // namespace mole
