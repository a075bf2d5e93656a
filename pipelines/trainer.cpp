#include "pipelines/trainer.h"

#include <ATen/autocast_mode.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include <torch/csrc/autograd/profiler_legacy.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "core/json_config.h"
#include "dist/data_parallel.h"
#include "dist/process_group.h"
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

// ---- data parallel: what the ranks agree on ---------------------------------------------------------------------

// After a step, one small allreduce: the losses become their means over the ranks (what one process accumulating
// the ranks' batches reports), tokens and samples their sums; the stop request and the skipped-record count are
// pooled. Returns (any rank interrupted, skipped records on all ranks).
std::pair<bool, int64_t> agree_on_step(ProcessGroup& group, StepStats& s, bool interrupted, int64_t skipped) {
  if (group.size() == 1) return {interrupted, skipped};
  std::vector<double> v = {s.loss,         s.lm_loss,          double(s.tokens), double(s.samples),
                           s.data_wait_s,  interrupted ? 1.0 : 0.0, double(skipped)};
  for (const auto& [name, value] : s.aux) v.push_back(value);  // the same losses on every rank: one model
  torch::Tensor t = torch::tensor(v, torch::kFloat64);
  group.all_reduce_sum(t);
  const auto a = t.accessor<double, 1>();
  const double mean = 1.0 / double(group.size());
  s.loss = a[0] * mean, s.lm_loss = a[1] * mean;
  s.tokens = int64_t(a[2]), s.samples = int64_t(a[3]);
  s.data_wait_s = a[4] * mean;
  int64_t i = 7;
  for (auto& [name, value] : s.aux) value = a[i++] * mean;
  return {a[5] > 0, int64_t(a[6])};
}

// The routing statistics of every rank pooled on rank 0 (elsewhere: this rank's, unused).
RoutingTable pooled_routing(ProcessGroup& group, const RoutingTable& mine) {
  if (group.size() == 1) return mine;
  const std::vector<std::string> all = group.gather_to_main(mine.layers.empty() ? "" : mine.to_json().dump());
  RoutingTable pooled;
  for (const std::string& text : all)
    if (!text.empty()) pooled.merge(RoutingTable::from_json(json::parse(text), "routing statistics of a rank"));
  return group.is_main() ? pooled : mine;
}

FamilyRoutingTable pooled_families(ProcessGroup& group, const FamilyRoutingTable& mine) {
  if (group.size() == 1) return mine;
  FamilyRoutingTable pooled;
  for (const std::string& text : group.gather_to_main(mine.to_json().dump()))
    pooled.merge(FamilyRoutingTable::from_json(json::parse(text), "family routing of a rank"));
  return group.is_main() ? pooled : mine;
}

SkipReport pooled_skips(ProcessGroup& group, const SkipReport& mine) {
  if (group.size() == 1) return mine;
  SkipReport pooled;
  for (const std::string& text : group.gather_to_main(mine.to_json().dump()))
    pooled.merge(SkipReport::from_json(json::parse(text)));
  return group.is_main() ? pooled : mine;
}

std::vector<torch::Tensor> trainable_tensors(const AdamW& optimizer) {
  std::vector<torch::Tensor> out;
  for (const auto& g : optimizer.groups())
    for (const auto& [name, p] : g.params) out.push_back(p);
  return out;
}

}  // namespace

StepStats train_step(Llava& model, DataLoader& loader, const AdamW& optimizer, int64_t grad_accum,
                     const torch::Device& device, LayerLosses& losses, ProcessGroup* group,
                     FamilyRouting* families) {
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
    if (families && batch->token_family.defined()) {  // in the order the decoder's MoLE layers see the tokens
      const torch::Tensor family = batch->token_family.to(device).reshape({-1});
      families->set_tokens(packed ? family.masked_select(mask.reshape({-1}).to(torch::kBool)) : family);
    }
    // Autocast keeps the bf16 copy of each float32 weight it cast until its cache is cleared (Python clears it
    // when the outermost autocast block ends); the run's guard never ends, so each forward starts afresh here,
    // reading the weights the last optimizer step (or anything else) wrote.
    at::autocast::clear_cache();
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
  if (group) average_gradients(*group, trainable_tensors(optimizer));
  s.grad_norm = grad_norm(optimizer.groups());
  return s;
}

EvalLoss evaluate_loss(Llava& model, std::shared_ptr<const LlavaDataset> data, std::shared_ptr<const Tokenizer> tokenizer,
                       std::shared_ptr<const ImageProcessor> images, LoaderOptions options, const torch::Device& device,
                       ProcessGroup* group) {
  options.shuffle = false;
  options.n_epochs = 1;
  options.file_weights.clear();
  options.sample_hook = nullptr;
  options.n_workers = std::min<int64_t>(options.n_workers, 1);
  options.drop_last = false;
  DataLoader loader(std::move(data), std::move(tokenizer), std::move(images), options);
  torch::NoGradGuard no_grad;
  RoutingSinkScope no_routing(RoutingSinks{});  // held-out batches count in no routing statistic or balance loss
  const bool was_training = model->is_training();
  model->eval();
  double loss_sum = 0;  // loss x targets, summed over batches
  int64_t targets = 0;
  while (std::optional<Batch> batch = loader.next()) {
    const bool packed = !batch->packed_rows.empty();
    at::autocast::clear_cache();
    torch::Tensor hidden = model->hidden(batch->input_ids.to(device), batch->attention_mask.to(device),
                                         batch->pixel_values.defined() ? batch->pixel_values.to(device) : torch::Tensor(),
                                         packed ? batch->position_ids.to(device) : torch::Tensor(),
                                         packed ? &batch->packed_rows : nullptr);
    const torch::Tensor labels = batch->labels.to(device);
    // next_token_loss is the mean over the batch's targets (labels after the first position that are not -100)
    const int64_t n = (labels.narrow(1, 1, labels.size(1) - 1) != kIgnoreIndex).sum().item<int64_t>();
    if (n == 0) continue;
    loss_sum += model->language_model->next_token_loss(hidden, labels).item<double>() * double(n);
    targets += n;
  }
  if (was_training) model->train();
  if (group && group->size() > 1) {
    torch::Tensor sums = torch::tensor({loss_sum, double(targets)}, torch::kFloat64);
    group->all_reduce_sum(sums);
    loss_sum = sums[0].item<double>();
    targets = int64_t(sums[1].item<double>());
  }
  EvalLoss out;
  out.targets = targets;
  out.loss = targets > 0 ? loss_sum / double(targets) : std::nan("");
  out.skipped = loader.skip_report().total();
  return out;
}

const std::vector<std::string>& resumable_config_changes() {
  static const std::vector<std::string> keys = {
      "out",          "run.log_every", "run.save_every", "run.keep_last", "run.stop_after", "run.threads",
      "run.device",   "run.progress",  "run.profile_step", "run.max_bad_steps", "data.workers", "data.strict",
      "data.eval",    "run.eval_every"};
  return keys;
}

namespace {

void collect_changes(const json& saved, const json& now, const std::string& prefix, std::vector<std::string>* out) {
  const auto& allowed = resumable_config_changes();
  if (std::find(allowed.begin(), allowed.end(), prefix) != allowed.end()) return;
  if (saved.is_object() && now.is_object()) {
    std::set<std::string> keys;
    for (const auto& [k, v] : saved.items()) keys.insert(k);
    for (const auto& [k, v] : now.items()) keys.insert(k);
    for (const std::string& k : keys)
      collect_changes(saved.contains(k) ? saved[k] : json(), now.contains(k) ? now[k] : json(),
                      prefix.empty() ? k : prefix + "." + k, out);
    return;
  }
  if (saved != now) out->push_back(prefix + ": " + saved.dump() + " -> " + now.dump());
}

// The step the newest checkpoint holds (-1 when unreadable).
int64_t checkpoint_step(const std::string& dir) {
  try {
    return read_json_file(dir + "/trainer_state.json").at("step").get<int64_t>();
  } catch (const std::exception&) {
    return -1;
  }
}

// metrics.jsonl as it stood at `step`: the lines of steps after it (written before a crash, and to be written
// again by the resumed run) are dropped, so the log reads as one run.
void truncate_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept, line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("step") && j["step"].is_number() &&
        j["step"].get<int64_t>() > step)
      continue;
    if (!j.is_discarded() && j.is_object() && j.value("event", "") == "end") continue;  // the end comes again
    kept += line + "\n";
  }
  in.close();
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp, std::ios::binary | std::ios::trunc) << kept;
  fs::rename(tmp, path);
}

}  // namespace

std::vector<std::string> config_changes(const json& saved, const json& now) {
  std::vector<std::string> out;
  collect_changes(saved, now, "", &out);
  return out;
}

TrainResult run_training(const TrainConfig& c, bool resume, const TrainHooks& hooks, const RunFolderRules& rules) {
  // ---- set-up: the process group, folders, model, data, optimizer, resume ----
  // Under torchrun every rank runs all of this; rank 0 alone writes files and the log (README: Many processes).
  const Launch launch = Launch::from_environment();
  if (c.run.threads > 0) {
    torch::set_num_threads(int(c.run.threads));
  } else if (launch.local_world_size > 1 && !std::getenv("MOLE_THREADS")) {  // the machine's cores shared out
    const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
    torch::set_num_threads(std::max(1, cores / int(launch.local_world_size)));
  }
  torch::Device device(c.run.device);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw ConfigError("run.device " + c.run.device + ": no CUDA device here (mole built without CUDA, or no GPU "
                      "visible); use cpu, or build with scripts/setup.sh --cuda on a machine with a GPU");
  if (device.is_cuda() && !device.has_index() && launch.launched)
    device = torch::Device(torch::kCUDA, c10::DeviceIndex(launch.local_rank));  // one device per local rank
  ProcessGroup group(launch);
  const bool main_rank = group.is_main();
  ProcessGroup* const dp = group.size() > 1 ? &group : nullptr;

  const std::string checkpoints = c.out_dir + "/checkpoints";
  const std::vector<std::string> run_files = {c.out_dir + "/run.json", c.out_dir + "/metrics.jsonl", checkpoints,
                                              c.out_dir + "/final"};
  std::optional<std::string> resume_from;
  if (resume) {
    resume_from = latest_checkpoint(checkpoints);
    if (!resume_from) throw ConfigError(c.out_dir + ": --resume, but there is no checkpoint in " + checkpoints);
    const std::string saved_config = c.out_dir + "/run.json";
    if (fs::exists(saved_config)) {
      const std::vector<std::string> changes = config_changes(read_json_file(saved_config), c.to_json());
      if (!changes.empty() && !rules.allow_config_change) {
        std::string list;
        for (const std::string& change : changes) list += "\n  " + change;
        throw ConfigError(saved_config + ": --resume with a config that differs from the saved one in what decides "
                          "the run, so it would not continue exactly:" + list +
                          "\nresume with the saved config, or pass --allow-config-change");
      }
      // the same step count and a final/ folder: the run is over, there is nothing to continue
      const bool same_length = std::none_of(changes.begin(), changes.end(), [](const std::string& change) {
        return change.rfind("optim.steps:", 0) == 0 || change.rfind("optim.epochs:", 0) == 0;
      });
      if (same_length && fs::exists(c.out_dir + "/final")) {
        TrainResult done;
        done.already_finished = true;
        done.steps = checkpoint_step(*resume_from);
        done.final_dir = c.out_dir + "/final";
        if (main_rank)
          std::fprintf(stderr, "%s: the run finished at step %lld (model in %s); nothing to resume, nothing changed\n",
                       c.out_dir.c_str(), (long long)done.steps, done.final_dir.c_str());
        return done;
      }
    }
  } else if (std::any_of(run_files.begin(), run_files.end(), [](const std::string& f) { return fs::exists(f); })) {
    if (!rules.overwrite)
      throw ConfigError(c.out_dir + ": holds a run already (run.json, metrics.jsonl, checkpoints/ or final/); "
                        "continue it with --resume, or start it over with --overwrite");
    group.barrier();  // every rank has looked before rank 0 removes
    if (main_rank)
      for (const std::string& f : run_files) fs::remove_all(f);
  }
  group.barrier();  // every rank has found the checkpoint before rank 0 writes anything
  fs::create_directories(c.out_dir);
  if (main_rank) write_json_file(c.out_dir + "/run.json", c.to_json());

  torch::manual_seed(c.run.seed);
  const ModelSpec spec = spec_for(c);
  // model.dtype bfloat16: what does not train is held in bf16 (autocast computes in it anyway). Outside pretraining
  // no base parameter trains, so the base is read straight into bf16; what trains stays float32.
  const bool bf16_base = c.model.dtype == "bfloat16";
  TrainedModel built =
      build_model(spec, device, bf16_base && c.stage != Stage::kPretrain ? torch::kBFloat16 : torch::kFloat32);
  Llava model = built.model;
  const NamedTensors trainable = select_trainable(model, c);
  set_activation_checkpointing(model, c.optim.activation_checkpointing);
  if (bf16_base) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters())
      if (!p.requires_grad() && p.is_floating_point()) p.set_data(p.to(torch::kBFloat16));
  }
  int64_t total_params = 0;
  for (const auto& p : model->parameters()) total_params += p.numel();
  if (main_rank)
    std::fprintf(stderr, "mole train %s: %lld parameters trainable of %lld (%.2f%%)%s\n", enum_name(c.stage).c_str(),
                 (long long)count_elements(trainable), (long long)total_params,
                 100.0 * double(count_elements(trainable)) / double(total_params),
                 dp ? (", " + std::to_string(group.size()) + " processes").c_str() : "");
  if (dp) {
    std::vector<torch::Tensor> params;
    for (const auto& [name, p] : trainable) params.push_back(p);
    broadcast_parameters(group, params);  // rank 0's start, whatever each rank's initialisation drew
    // each rank its own random stream from here on (dropout, noisy gating); rank 0 keeps the one-process stream
    if (group.rank() > 0) torch::manual_seed(c.run.seed + 0x9E3779B97F4A7C15ull * uint64_t(group.rank()));
  }

  AdamW optimizer(make_param_groups(trainable, c.optim.lr, c.optim.projector_lr > 0 ? c.optim.projector_lr : c.optim.lr,
                                    c.optim.router_lr > 0 ? c.optim.router_lr : c.optim.lr, c.optim.weight_decay),
                  c.optim.beta1, c.optim.beta2, c.optim.eps);
  TrainerState state;
  state.world_size = group.size();
  std::optional<LoaderState> loader_start;
  if (resume_from) {
    const json saved = restore_checkpoint(*resume_from, trainable, optimizer);
    const int64_t saved_world = saved.value("world_size", int64_t(1));
    if (saved_world != group.size())
      throw ConfigError(*resume_from + ": written by a run of " + std::to_string(saved_world) + " process" +
                        (saved_world == 1 ? "" : "es") + "; this run has " + std::to_string(group.size()) +
                        ": resume with the same number (torchrun --nproc_per_node / --nnodes)");
    state.step = saved.at("step").get<int64_t>();
    state.bad_streak = saved.value("bad_streak", int64_t(0));
    loader_start = LoaderState::from_json(dp ? saved.at("rank_loaders").at(size_t(group.rank())) : saved.at("loader"));
    if (main_rank)
      std::fprintf(stderr, "resumed from %s at step %lld\n", resume_from->c_str(), (long long)state.step);
  }
  LoaderOptions loading = loader_options(c, model);
  loading.rank = group.rank();
  loading.world_size = group.size();
  loading.sample_hook = hooks.sample_hook;
  const auto image_processor = std::make_shared<const ImageProcessor>(built.image_config);
  DataLoader loader(read_training_data(c), built.tokenizer, image_processor, loading, loader_start);
  // data.eval: the held-out file, read once (its bad records are counted in its own report)
  std::shared_ptr<const LlavaDataset> eval_data;
  if (!c.data.eval.empty()) eval_data = std::make_shared<const LlavaDataset>(read_llava_dataset(c.data.eval, c.data.strict));
  LoaderOptions eval_options = loading;
  // an optimizer step takes grad_accum batches on each rank
  const double batches_per_step = double(c.optim.grad_accum) * double(group.size());
  state.total_steps = c.optim.steps > 0 ? c.optim.steps
                                        : std::max<int64_t>(1, int64_t(std::ceil(c.optim.epochs *
                                                                                 double(loader.batches_per_epoch()) /
                                                                                 batches_per_step)));
  const int64_t warmup = int64_t(std::ceil(c.optim.warmup_ratio * double(state.total_steps)));
  if (resume_from) restore_rng(*resume_from, group.rank());
  // Every rank calls this at the same steps: the ranks' positions, skips and generators go to rank 0, which
  // writes the folder; no rank goes on before it is in place.
  auto save_checkpoint = [&] {
    state.loader = loader.state();
    state.skipped = pooled_skips(group, loader.skip_report());
    std::string path;
    if (dp) {
      const std::vector<std::string> positions = group.gather_to_main(loader.state().to_json().dump());
      const torch::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
      const std::vector<std::string> generators =
          group.gather_to_main(std::string(static_cast<const char*>(rng.data_ptr()), size_t(rng.nbytes())));
      state.rank_loaders.clear();
      state.rank_rng.clear();
      for (const std::string& p : positions) state.rank_loaders.push_back(LoaderState::from_json(json::parse(p)));
      for (size_t r = 1; r < generators.size(); ++r) {
        torch::Tensor t = torch::empty({int64_t(generators[r].size())}, torch::kUInt8);
        std::memcpy(t.data_ptr(), generators[r].data(), generators[r].size());
        state.rank_rng.push_back(t);
      }
    }
    if (main_rank)
      path = write_checkpoint(checkpoints, state.step, c.run.keep_last, [&](const std::string& dir) {
        write_checkpoint_files(dir, spec, trainable, optimizer, state);
        if (hooks.checkpoint_filled) hooks.checkpoint_filled(dir);
      });
    group.barrier();
    return path;
  };

  RoutingStats routing;  // this logging window's routing decisions
  LayerLosses routing_losses;
  const bool bf16 = c.optim.bf16 == Bf16Mode::kOn || (c.optim.bf16 == Bf16Mode::kAuto && device.is_cuda());
  // by task family too, when the data has families (data.families)
  std::optional<FamilyRouting> families;
  if (!loader.families().names.empty()) families.emplace(loader.families().names);
  FamilyRouting* family_sink = families ? &*families : nullptr;
  TrainingGuard guard(device, bf16, RoutingSinks{&routing, &routing_losses, nullptr, family_sink});
  std::optional<MetricsWindow> window;  // rank 0's
  if (main_rank) {
    if (resume_from) truncate_metrics(c.out_dir + "/metrics.jsonl", state.step);
    window.emplace(c.out_dir + "/metrics.jsonl", resume_from.has_value(), c.stage, c.run.progress);
  }
  const auto run_start = Clock::now();
  const int64_t first_step = state.step;
  TrainResult result;
  bool stop_agreed = false;  // some rank was interrupted at the last step (one process: read at each step)
  int64_t skipped_records = 0;
  std::deque<double> recent_losses;  // the last log_every steps' losses (this process's part of the run)

  // ---- the loop ----
  model->train();
  while (state.step < state.total_steps) {
    const bool interrupted = dp ? stop_agreed : TrainingGuard::interrupted();
    if (interrupted || (c.run.stop_after > 0 && state.step >= c.run.stop_after)) {
      result.interrupted = interrupted;
      result.stopped = true;
      break;
    }
    StepStats stats;
    if (state.step + 1 == c.run.profile_step && main_rank) {  // the step's forward and backward, op by op
      torch::autograd::profiler::RecordProfile profile(c.out_dir + "/profile_step_" +
                                                        std::to_string(c.run.profile_step) + ".json");
      stats = train_step(model, loader, optimizer, c.optim.grad_accum, device, routing_losses, dp, family_sink);
    } else {
      stats = train_step(model, loader, optimizer, c.optim.grad_accum, device, routing_losses, dp, family_sink);
    }
    std::tie(stop_agreed, skipped_records) =
        agree_on_step(group, stats, TrainingGuard::interrupted(), loader.skip_report().total());
    const double lr_multiplier = cosine_with_warmup(state.step, warmup, state.total_steps, c.optim.min_lr_ratio);
    ++state.step;  // a skipped step consumes its batches: schedule and data stay in step with a clean run
    if (!stats.finite()) {  // the same on every rank: losses and gradients are the pooled ones
      if (window) window->skipped_step(state.step, stats, state.bad_streak + 1);
      ++state.bad_streak;
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
    result.last_loss = stats.loss;
    recent_losses.push_back(stats.loss);
    if (int64_t(recent_losses.size()) > std::max<int64_t>(1, c.run.log_every)) recent_losses.pop_front();

    WindowPosition at;
    at.step = state.step, at.total_steps = state.total_steps, at.lr = c.optim.lr * lr_multiplier;
    at.seconds = seconds_since(run_start);
    at.eta_seconds = at.seconds / double(state.step - first_step) * double(state.total_steps - state.step);
    if (window) {
      window->add(stats);
      window->show_progress(at, stats);
    }
    if (state.step % c.run.log_every == 0 || state.step == state.total_steps) {
      at.epoch = double(loader.state().epoch) + double(loader.state().batch) / double(loader.batches_per_epoch());
      at.skipped_records = skipped_records;
      const RoutingTable table = pooled_routing(group, routing.table());
      const FamilyRoutingTable by_family = families ? pooled_families(group, families->table()) : FamilyRoutingTable{};
      if (window) window->write_window(at, &table, &by_family);
      routing.reset();
      if (families) families->reset();
    }
    const bool eval_now = eval_data && ((c.run.eval_every > 0 && state.step % c.run.eval_every == 0) ||
                                        state.step == state.total_steps);
    if (eval_now) {
      const EvalLoss e = evaluate_loss(model, eval_data, built.tokenizer, image_processor, eval_options, device, dp);
      if (window) {
        window->write_event({{"step", state.step}, {"eval_loss", e.loss}, {"eval_targets", e.targets},
                             {"eval_skipped_records", e.skipped}});
        std::fprintf(stderr, "%sstep %lld: eval loss %.4f (%lld targets in %s)\n",
                     c.run.progress == ProgressMode::kBar || c.run.progress == ProgressMode::kAuto ? "\n" : "",
                     (long long)state.step, e.loss, (long long)e.targets, c.data.eval.c_str());
      }
      result.eval_loss = e.loss;
    }
    if (hooks.after_step) hooks.after_step(state.step, model);
    if (c.run.save_every > 0 && state.step % c.run.save_every == 0 && state.step < state.total_steps)
      save_checkpoint();
  }
  if (window) window->finish();

  // ---- the end: the skip report, a last checkpoint, final/ ----
  result.steps = state.step;
  for (double loss : recent_losses) result.mean_loss += loss / double(recent_losses.size());
  const SkipReport skipped = pooled_skips(group, loader.skip_report());
  result.skipped = skipped;
  const std::vector<std::string> waits = group.gather_to_main(std::to_string(loader.wait_seconds()));
  if (window) {
    double wait_total = 0;
    for (const std::string& w : waits) wait_total += std::stod(w);
    if (skipped.total() > 0)
      std::fprintf(stderr, "skipped records: %lld\n%s", (long long)skipped.total(), skipped.to_text().c_str());
    window->write_event({{"event", result.interrupted ? "interrupted" : result.stopped ? "stopped" : "end"},
                         {"step", state.step},
                         {"skipped_records", skipped.to_json()},
                         {"data_wait_s_total", wait_total}});
  }
  if (result.stopped) {
    result.final_dir = save_checkpoint();
    if (main_rank)
      std::fprintf(stderr, "%s at step %lld: checkpoint written to %s (continue with --resume)\n",
                   result.interrupted ? "interrupted" : "stopped (run.stop_after)", (long long)state.step,
                   result.final_dir.c_str());
    return result;
  }
  save_checkpoint();
  if (main_rank) {
    result.final_dir = write_final(c, spec, built, model, trainable);
    std::fprintf(stderr, "done: %lld steps, mean loss of the last %zu steps %.4f (last step %.4f), model in %s\n",
                 (long long)state.step, recent_losses.size(), result.mean_loss, result.last_loss,
                 result.final_dir.c_str());
  }
  group.barrier();  // final/ is in place before any rank returns
  return result;
}

}  // namespace mole
