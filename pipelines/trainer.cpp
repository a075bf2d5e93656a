#include "pipelines/trainer.h"

#include <ATen/autocast_mode.h>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include "core/json_config.h"
#include "moe/balance.h"
#include "pipelines/checkpoint.h"
#include "pipelines/train_files.h"
#include "pipelines/train_setup.h"

namespace mole {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// ---- what a run changes in the process, restored on any exit ------------------------------------------------

std::atomic<bool> g_interrupted{false};
extern "C" void on_sigint(int) {
  g_interrupted = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

// Ctrl-C finishes the step, writes a checkpoint and stops; bf16 autocast on the run's device; the routing
// statistics and balance losses of every forward go to the run's sinks. All three are put back as they were
// when the guard ends, however the run ends.
class TrainingGuard {
 public:
  TrainingGuard(torch::Device device, bool bf16, const RoutingSinks& sinks)
      : device_(device.type()),
        autocast_was_on_(at::autocast::is_autocast_enabled(device_)),
        autocast_dtype_(at::autocast::get_autocast_dtype(device_)),
        sinks_(sinks) {
    g_interrupted = false;
    previous_sigint_ = std::signal(SIGINT, on_sigint);
    if (bf16) {
      at::autocast::set_autocast_enabled(device_, true);
      at::autocast::set_autocast_dtype(device_, at::kBFloat16);
    }
  }
  ~TrainingGuard() {
    std::signal(SIGINT, previous_sigint_);
    at::autocast::set_autocast_enabled(device_, autocast_was_on_);
    at::autocast::set_autocast_dtype(device_, autocast_dtype_);
  }
  TrainingGuard(const TrainingGuard&) = delete;
  TrainingGuard& operator=(const TrainingGuard&) = delete;
  static bool interrupted() { return g_interrupted; }

 private:
  c10::DeviceType device_;
  bool autocast_was_on_;
  at::ScalarType autocast_dtype_;
  void (*previous_sigint_)(int) = SIG_DFL;
  RoutingSinkScope sinks_;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

}  // namespace

StepStats train_step(Llava& model, DataLoader& loader, const AdamW& optimizer, int64_t grad_accum,
                     const torch::Device& device, LayerLosses& losses) {
  StepStats s;
  const double share = 1.0 / double(grad_accum);
  for (int64_t micro = 0; micro < grad_accum; ++micro) {
    const double wait_before = loader.wait_seconds();
    std::optional<Batch> batch = loader.next();
    s.data_wait_s += loader.wait_seconds() - wait_before;
    const torch::Tensor ids = batch->input_ids.to(device), mask = batch->attention_mask.to(device);
    const torch::Tensor labels = batch->labels.to(device);
    const torch::Tensor pixels = batch->pixel_values.defined() ? batch->pixel_values.to(device) : torch::Tensor();
    const bool packed = !batch->packed_rows.empty();
    const torch::Tensor positions = packed ? batch->position_ids.to(device) : torch::Tensor();
    losses.clear();
    torch::Tensor hidden = model->hidden(ids, mask, pixels, positions, packed ? &batch->packed_rows : nullptr);
    // next-token loss at the supervised positions only: the state at t predicts labels at t + 1
    torch::Tensor lm = model->language_model->next_token_loss(hidden, labels);
    torch::Tensor loss = lm;
    if (!losses.empty()) {
      BalanceLosses aux = sum_over_layers(losses);
      if (aux.total.defined()) loss = loss + aux.total;
      for (const auto& [name, term] : aux.terms) s.aux[name] += term.item<double>() * share;
    }
    (loss * share).backward();
    s.loss += loss.item<double>() * share;
    s.lm_loss += lm.item<double>() * share;
    s.tokens += batch->n_tokens;
    s.samples += batch->size();
  }
  s.grad_norm = grad_norm(optimizer.groups());
  return s;
}

TrainResult run_training(const TrainConfig& c, bool resume, const TrainHooks& hooks) {
  // ---- set-up: folders, model, data, optimizer, resume ----
  if (c.run.threads > 0) torch::set_num_threads(int(c.run.threads));
  const torch::Device device(c.run.device);
  fs::create_directories(c.out_dir);
  const std::string checkpoints = c.out_dir + "/checkpoints";
  std::optional<std::string> resume_from;
  if (resume) {
    resume_from = latest_checkpoint(checkpoints);
    if (!resume_from) throw ConfigError(c.out_dir + ": --resume, but there is no checkpoint in " + checkpoints);
  }
  write_json_file(c.out_dir + "/run.json", c.to_json());

  torch::manual_seed(c.run.seed);
  const ModelSpec spec = spec_for(c);
  TrainedModel built = build_model(spec, device);
  Llava model = built.model;
  const NamedTensors trainable = select_trainable(model, c);
  int64_t total_params = 0;
  for (const auto& p : model->parameters()) total_params += p.numel();
  std::fprintf(stderr, "mole train %s: %lld parameters trainable of %lld (%.2f%%)\n", enum_name(c.stage).c_str(),
               (long long)count_elements(trainable), (long long)total_params,
               100.0 * double(count_elements(trainable)) / double(total_params));

  AdamW optimizer(make_param_groups(trainable, c.optim.lr, c.optim.projector_lr > 0 ? c.optim.projector_lr : c.optim.lr,
                                    c.optim.router_lr > 0 ? c.optim.router_lr : c.optim.lr, c.optim.weight_decay),
                  c.optim.beta1, c.optim.beta2, c.optim.eps);
  TrainerState state;
  std::optional<LoaderState> loader_start;
  if (resume_from) {
    const json saved = restore_checkpoint(*resume_from, trainable, optimizer);
    state.step = saved.at("step").get<int64_t>();
    state.bad_streak = saved.value("bad_streak", int64_t(0));
    loader_start = LoaderState::from_json(saved.at("loader"));
    std::fprintf(stderr, "resumed from %s at step %lld\n", resume_from->c_str(), (long long)state.step);
  }
  DataLoader loader(read_training_data(c), built.tokenizer, std::make_shared<const ImageProcessor>(built.image_config),
                    loader_options(c, model), loader_start);
  state.total_steps = c.optim.steps > 0 ? c.optim.steps
                                        : std::max<int64_t>(1, int64_t(std::ceil(c.optim.epochs *
                                                                                 double(loader.batches_per_epoch()) /
                                                                                 double(c.optim.grad_accum))));
  const int64_t warmup = int64_t(std::ceil(c.optim.warmup_ratio * double(state.total_steps)));
  if (resume_from) restore_rng(*resume_from);
  auto save_checkpoint = [&] {
    state.loader = loader.state();
    state.skipped = loader.skip_report();
    return write_checkpoint(checkpoints, state.step, c.run.keep_last, [&](const std::string& dir) {
      write_checkpoint_files(dir, spec, trainable, optimizer, state);
      if (hooks.checkpoint_filled) hooks.checkpoint_filled(dir);
    });
  };

  RoutingStats routing;  // this logging window's routing decisions
  LayerLosses routing_losses;
  const bool bf16 = c.optim.bf16 == Bf16Mode::kOn || (c.optim.bf16 == Bf16Mode::kAuto && device.is_cuda());
  TrainingGuard guard(device, bf16, RoutingSinks{&routing, &routing_losses});
  MetricsWindow window(c.out_dir + "/metrics.jsonl", resume_from.has_value(), c.stage, c.run.progress);
  const auto run_start = Clock::now();
  const int64_t first_step = state.step;
  TrainResult result;

  // ---- the loop ----
  model->train();
  while (state.step < state.total_steps) {
    if (TrainingGuard::interrupted() || (c.run.stop_after > 0 && state.step >= c.run.stop_after)) {
      result.interrupted = TrainingGuard::interrupted();
      result.stopped = true;
      break;
    }
    StepStats stats;
    if (state.step + 1 == c.run.profile_step) {  // the step's forward and backward, op by op
      torch::autograd::profiler::RecordProfile profile(c.out_dir + "/profile_step_" +
                                                        std::to_string(c.run.profile_step) + ".json");
      stats = train_step(model, loader, optimizer, c.optim.grad_accum, device, routing_losses);
    } else {
      stats = train_step(model, loader, optimizer, c.optim.grad_accum, device, routing_losses);
    }
    const double lr_multiplier = cosine_with_warmup(state.step, warmup, state.total_steps, c.optim.min_lr_ratio);
    ++state.step;  // a skipped step consumes its batches: schedule and data stay in step with a clean run
    if (!stats.finite()) {
      window.skipped_step(state.step, stats, ++state.bad_streak);
      optimizer.zero_grad();
      if (state.bad_streak >= c.run.max_bad_steps)
        throw TrainingError("stopping: " + std::to_string(state.bad_streak) +
                            " steps in a row had a non-finite loss or gradient (lower optim.lr, check the data, "
                            "or resume from the last checkpoint in " + checkpoints + ")");
      continue;
    }
    state.bad_streak = 0;
    clip_grads(optimizer.groups(), stats.grad_norm, c.optim.clip);
    optimizer.step(lr_multiplier);
    optimizer.zero_grad();
    window.add(stats);
    result.last_loss = stats.loss;

    WindowPosition at;
    at.step = state.step, at.total_steps = state.total_steps, at.lr = c.optim.lr * lr_multiplier;
    at.seconds = seconds_since(run_start);
    at.eta_seconds = at.seconds / double(state.step - first_step) * double(state.total_steps - state.step);
    window.show_progress(at, stats);
    if (state.step % c.run.log_every == 0 || state.step == state.total_steps) {
      at.epoch = double(loader.state().epoch) + double(loader.state().batch) / double(loader.batches_per_epoch());
      at.skipped_records = loader.skip_report().total();
      const RoutingTable table = routing.table();
      window.write_window(at, &table);
      routing.reset();
    }
    if (hooks.after_step) hooks.after_step(state.step, model);
    if (c.run.save_every > 0 && state.step % c.run.save_every == 0 && state.step < state.total_steps)
      save_checkpoint();
  }
  window.finish();

  // ---- the end: the skip report, a last checkpoint, final/ ----
  result.steps = state.step;
  const SkipReport skipped = loader.skip_report();
  if (skipped.total() > 0)
    std::fprintf(stderr, "skipped records: %lld\n%s", (long long)skipped.total(), skipped.to_text().c_str());
  window.write_event({{"event", result.interrupted ? "interrupted" : result.stopped ? "stopped" : "end"},
                      {"step", state.step},
                      {"skipped_records", skipped.to_json()},
                      {"data_wait_s_total", loader.wait_seconds()}});
  if (result.stopped) {
    result.final_dir = save_checkpoint();
    std::fprintf(stderr, "%s at step %lld: checkpoint written to %s (continue with --resume)\n",
                 result.interrupted ? "interrupted" : "stopped (run.stop_after)", (long long)state.step,
                 result.final_dir.c_str());
    return result;
  }
  save_checkpoint();
  result.final_dir = write_final(c, spec, built, model, trainable);
  std::fprintf(stderr, "done: %lld steps, final loss %.4f, model in %s\n", (long long)state.step, result.last_loss,
               result.final_dir.c_str());
  return result;
}

}  // namespace mole
